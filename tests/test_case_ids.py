"""Case ids of the current release stay what they are: a re-launch finds the documents it wrote.

The ids below were computed by the release at commit 5e6e410 from the same overrides; a change
to how identity is derived (``results.case_id``) must keep them, or give a migration. Keys that
change speed only (batch sizes, the zero-shot scoring loop, progress bars, folders) leave the id
as it was.
"""

from __future__ import annotations

import pytest

from conftest import compose_config
from sparsebench.config import model_name_from_path
from sparsebench.results import case_id

DATA = ["data.wikitext2=data/wikitext2-tok", "calibration.dataset=wikitext2"]  # a fixed string: ids hash the path given

CASES = {
    "dense": ["metric=none"],
    "wanda_50": ["metric=wanda", *DATA],
    "sparsegpt_2of4_ptb": ["metric=sparsegpt", "sparsity=2of4", "data.ptb=data/ptb", "eval.ppl.datasets=[wikitext2,ptb]", *DATA],
    "magnitude_layer": ["metric=magnitude", "metric.comparison=layer", "sparsity.ratio=0.6"],
    "owl_70": ["metric=wanda", "allocator=owl", "sparsity.ratio=0.7", *DATA],
    "neuroal_70": ["metric=wanda", "allocator=neuroal", "sparsity.ratio=0.7", *DATA],
    "trim_owl": ["metric=wanda", "allocator=trim", "allocator.layerwise=owl", "sparsity.ratio=0.7", *DATA],
    "alpha_eps": ["metric=sparsegpt", "allocator=alpha", "allocator.epsilon=0.3", *DATA],
    "dsnot_70": ["metric=wanda", "allocator=dsnot", "sparsity.ratio=0.7", *DATA],
    "swiftprune": ["metric=swiftprune", *DATA],
    "hassle_free": ["metric=hassle_free", "decomposition.rank=16", "sparsity=2of4", *DATA],
    "lora": ["metric=wanda", "finetune=lora", "finetune.steps=10", *DATA],
    "export_hf": ["metric=wanda", "export=hf", *DATA],
    "zeroshot": ["metric=wanda", "eval=zeroshot", "eval.zeroshot.tasks=[boolq]", "eval.zeroshot.limit=20", *DATA],
    "bos": ["metric=wanda", "model.bos_per_segment=true", *DATA],
    "gemma_dense": ["model=gemma3-270m-q4", "metric=none"],
}

# the same case run differently: same id
SAME_AS = {
    "wanda_50": ["calibration.batch_size=2", "eval.ppl.batch_size=3", "progress=false", "results_dir=elsewhere", "cache_dir=/tmp/x", "rerun=true"],
    "zeroshot": ["eval.zeroshot.scoring=hflm", "eval.zeroshot.batch_size=4"],
}

RECORDED = {  # at 5e6e410
    "dense": "SmolLM2-135M-Instruct.Q4_1_dense_50187ef1d4",
    "wanda_50": "SmolLM2-135M-Instruct.Q4_1_wanda_uniform_s0.5_823a4dbfd6",
    "sparsegpt_2of4_ptb": "SmolLM2-135M-Instruct.Q4_1_sparsegpt_uniform_2of4_692a2df02c",
    "magnitude_layer": "SmolLM2-135M-Instruct.Q4_1_magnitude_uniform_s0.6_4ffc9db632",
    "owl_70": "SmolLM2-135M-Instruct.Q4_1_wanda_owl_s0.7_40bf2bf782",
    "neuroal_70": "SmolLM2-135M-Instruct.Q4_1_wanda_neuroal_s0.7_3905c473e9",
    "trim_owl": "SmolLM2-135M-Instruct.Q4_1_wanda_trim_s0.7_a48fddb8bb",
    "alpha_eps": "SmolLM2-135M-Instruct.Q4_1_sparsegpt_alpha_s0.5_06e9a73bd0",
    "dsnot_70": "SmolLM2-135M-Instruct.Q4_1_wanda_dsnot_s0.7_472e7a0db3",
    "swiftprune": "SmolLM2-135M-Instruct.Q4_1_swiftprune_uniform_s0.5_bbe2a5f219",
    "hassle_free": "SmolLM2-135M-Instruct.Q4_1_hassle_free_uniform_2of4_b9811479bf",
    "lora": "SmolLM2-135M-Instruct.Q4_1_wanda_uniform_s0.5_lora_12192f2c6c",
    "export_hf": "SmolLM2-135M-Instruct.Q4_1_wanda_uniform_s0.5_22b063f745",
    "zeroshot": "SmolLM2-135M-Instruct.Q4_1_wanda_uniform_s0.5_5d4dafdd6c",
    "bos": "SmolLM2-135M-Instruct.Q4_1_wanda_uniform_s0.5_e113f1f80b",
    "gemma_dense": "gemma-3-270m-q4_k_m_dense_0ece8ca150",
}


def _id(overrides: list[str], device_type: str = "cpu") -> str:
    config = compose_config(overrides)
    return case_id(config, config["model"].get("name") or model_name_from_path(config["model"]["path"]), device_type)


@pytest.mark.parametrize("name", list(CASES))
def test_the_release_s_case_ids_are_kept(name):
    assert _id(CASES[name]) == RECORDED[name]


@pytest.mark.parametrize("name", list(SAME_AS))
def test_how_a_case_runs_leaves_its_id(name):
    assert _id(CASES[name] + SAME_AS[name]) == RECORDED[name]


def test_the_device_type_and_defining_keys_change_the_id():
    assert _id(CASES["wanda_50"], "cuda") != RECORDED["wanda_50"]
    assert _id(CASES["wanda_50"] + ["calibration.nsamples=64"]) != RECORDED["wanda_50"]
    assert len(set(RECORDED.values())) == len(RECORDED)
