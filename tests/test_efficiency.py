"""Export and efficiency as stages of a case: through the runner on tiny models, and their config errors."""

from __future__ import annotations

import time

import pytest
import torch

from conftest import compose_config, tiny_case_overrides
from sparsebench.config import validate
from sparsebench.errors import ConfigError
from sparsebench.evaluate.efficiency import EfficiencySpec, PeakMemory, decode, evaluate_efficiency, validate_efficiency
from sparsebench.blockwalk import Execution
from sparsebench.evaluate.perplexity import perplexity, segment
from sparsebench.data.tokens import evaluation_tokens
from sparsebench.data.corpora import corpus_named, resolve_source
from sparsebench.export import load_export
from sparsebench.models.adapters import adapter_for
from sparsebench.results import case_id
from sparsebench.runner import run_case
from sparsebench.testing.tiny_models import tiny_model

TINY_EFFICIENCY = [
    "eval.efficiency.enabled=true", "eval.efficiency.prefill_seqlen=32", "eval.efficiency.decode_batches=[1,2]", "eval.efficiency.warmup=0",
    "eval.efficiency.warmup_seconds=0", "eval.efficiency.decode_prompt=8", "eval.efficiency.decode_tokens=16", "eval.efficiency.repeats=2",
]


def test_hf_export_reloads_to_the_same_perplexity_and_efficiency_is_measured(tiny_model_dirs, tmp_path, cache_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    overrides = tiny_case_overrides(tiny_model_dirs["llama"], tmp_path / "results", cache_dir, "wanda", ["sparsity=2of4", "export=hf", *TINY_EFFICIENCY])
    spec = validate(compose_config(overrides))
    document = run_case(spec)
    assert document["status"] == "ok", document.get("error")
    section = document["export"]
    assert section["path"] == str(tmp_path / "results" / "models" / document["case_id"])
    assert section["weight_bytes"] >= section["dense_weight_bytes"] == document["model"]["parameters"] * 4
    assert section["bytes_on_disk"] > section["weight_bytes"]  # config and tokenizer too

    reloaded = AutoModelForCausalLM.from_pretrained(section["path"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(section["path"])
    corpus = corpus_named("wikitext2", "eval.ppl.datasets")
    tokens = evaluation_tokens(resolve_source(corpus, corpus.eval_split, spec.data_paths["wikitext2"]), tokenizer, cache_dir, None)
    segments = segment(tokens, 64, 3)
    again = perplexity(reloaded, adapter_for("auto", "llama"), segments, Execution("cpu", False, 4))
    assert again.ppl == document["metrics"]["ppl"]["wikitext2"]["ppl"]

    efficiency = document["metrics"]["efficiency"]
    assert set(efficiency["runs"]) == {"dense_stored"} and efficiency["speedup"] == {}
    dense = efficiency["runs"]["dense_stored"]["modes"]["eager"]
    assert dense["prefill"]["tokens_per_s"] > 0 and len(dense["prefill"]["seconds"]) == 2
    assert dense["prefill"]["seconds_min"] <= dense["prefill"]["seconds_q1"] <= dense["prefill"]["seconds_median"] <= dense["prefill"]["seconds_q3"]
    assert set(dense["decode"]) == {"1", "2"} and all(d["tokens_per_s"] > 0 for d in dense["decode"].values())
    assert any(skip["what"] == "sparse kernels" and "CUDA" in skip["why"] for skip in efficiency["skipped"])
    assert any(skip["what"] == "dense_stored: mode cuda_graph" and "CPU" in skip["why"] for skip in efficiency["skipped"])
    assert efficiency["conditions"]["before"]["torch_threads"] >= 1 and len(efficiency["conditions"]["after"]["loadavg_1_5_15"]) == 3
    assert "timings" in document and {"export_s", "eval_efficiency_s"} <= set(document["timings"])


def test_compressed_export_through_the_runner_at_float16(tiny_model_dirs, tmp_path, cache_dir):
    overrides = tiny_case_overrides(tiny_model_dirs["qwen2"], tmp_path / "results", cache_dir, "magnitude", ["export=compressed", "export.dtype=float16"])
    document = run_case(validate(compose_config(overrides)))
    assert document["status"] == "ok", document.get("error")
    section = document["export"]
    assert section["compression"]["sparsity_format"] == "sparse-bitmask" and section["compression"]["compressed_linears"] == 14
    assert section["dense_weight_bytes"] == document["model"]["parameters"] * 2 and section["weight_bytes"] < section["dense_weight_bytes"]
    loaded = load_export(section["path"])
    weight = loaded.model.layers[0].mlp.up_proj.weight
    assert weight.dtype == torch.float16 and (weight == 0).float().mean() == 0.5


def test_decode_is_timed_by_difference_and_peak_memory_is_read_per_measurement():
    model = tiny_model("llama")
    memory = PeakMemory("cpu")
    assert memory.reason_unavailable is None  # Linux: VmHWM resets through /proc/self/clear_refs
    result = decode(model, 2, 8, 12, "cpu", 0, 2, memory)
    difference = result["generate"]["seconds_median"] - result["first_token"]["seconds_median"]
    assert result["tokens_per_s"] == pytest.approx(2 * 11 / difference)
    assert result["peak_memory_bytes"] > 0
    spec = validate_efficiency({"enabled": True, "prefill_batch": 1, "prefill_seqlen": 512, "decode_batches": [1], "decode_prompt": 8,
                                "decode_tokens": 3, "warmup": 0, "repeats": 1, "sparse_kernels": "auto"})
    linears = [m for name, m in model.named_modules() if name.endswith("proj")]
    result = evaluate_efficiency(model, linears, spec, Execution("cpu"), None, 256)
    assert result["runs"]["dense_stored"]["modes"]["eager"]["prefill"]["seqlen"] == 256  # capped at the model's context
    assert [skip["why"] for skip in result["skipped"] if skip["what"] == "sparse kernels"] == [
        "the sparse kernels (cuSPARSELt 2:4, the bitmask kernels) need a CUDA GPU; this case ran on the CPU"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["sparsity=4of8", "export=compressed"], r"export=compressed: the compact layouts store .* not sparsity.pattern=4:8"),
        (["export=hf", "export.dtype=int8"], r"export.dtype='int8'"),
        (["export.format=zip"], r"export.format='zip': allowed values are none, hf, compressed"),
        (["eval=efficiency", "eval.efficiency.decode_tokens=1"], r"eval.efficiency.decode_tokens=1"),
        (["eval=efficiency", "eval.efficiency.sparse_kernels=yes"], r"eval.efficiency.sparse_kernels='yes': allowed values are auto, off"),
        (["eval=efficiency", "eval.efficiency.decode_batches=[]"], r"eval.efficiency.decode_batches"),
        (["eval=efficiency", "eval.efficiency.modes=[eager,compiled]"], r"eval.efficiency.modes=\['eager', 'compiled'\]: a list of distinct values from eager, static_eager, cuda_graph, compiled_graph"),
        (["eval=efficiency", "eval.efficiency.paths=[bitmask,kept]"],
         r"eval.efficiency.paths=\['bitmask', 'kept'\]: null \(each pattern's default paths\) or a list of distinct values from cusparselt, "
         r"semi_structured, bitmask, cusparselt_gemv24, gemv24, bitmask_kept"),
        (["eval=efficiency", "eval.efficiency.paths=[]"], r"eval.efficiency.paths=\[\]: null"),
        (["eval=efficiency", "eval.efficiency.warmup_seconds=-1"], r"eval.efficiency.warmup_seconds=-1.0: must be a number of seconds >= 0, or null"),
    ],
)
def test_bad_export_and_efficiency_settings_fail_before_any_model_loads(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(["device=cpu", *override]))


def test_fuse_projections_is_a_boolean_off_by_default_and_enters_the_id_only_when_set():
    settings = {"enabled": True, "prefill_batch": 1, "prefill_seqlen": 16, "decode_batches": [1], "decode_prompt": 8, "decode_tokens": 3,
                "warmup": 0, "repeats": 1, "sparse_kernels": "auto"}
    assert validate_efficiency(settings).fuse_projections is False
    assert validate_efficiency({**settings, "fuse_projections": None}).fuse_projections is False
    assert validate_efficiency({**settings, "fuse_projections": True}).fuse_projections is True
    with pytest.raises(ConfigError, match=r"eval.efficiency.fuse_projections='yes': must be true, false or null"):
        validate_efficiency({**settings, "fuse_projections": "yes"})
    plain = compose_config(["device=cpu", "eval=efficiency"])
    assert plain["eval"]["efficiency"]["fuse_projections"] is None
    fused = compose_config(["device=cpu", "eval=efficiency", "eval.efficiency.fuse_projections=true"])
    earlier = compose_config(["device=cpu", "eval=efficiency"])
    del earlier["eval"]["efficiency"]["fuse_projections"]
    assert case_id(plain, "m", "cpu") == case_id(earlier, "m", "cpu") != case_id(fused, "m", "cpu")


def test_warmup_seconds_keeps_calling_untimed_until_they_pass_and_null_gives_the_earlier_protocol_and_id():
    from sparsebench.evaluate.measure import timed

    calls = []

    def call():
        calls.append(1)
        time.sleep(0.01)

    result = timed(call, "cpu", warmup=1, repeats=2, memory=PeakMemory("cpu"), warmup_seconds=0.1)
    assert result["warmup_calls"] >= 6 and len(calls) == result["warmup_calls"] + 2
    calls.clear()
    assert timed(call, "cpu", warmup=1, repeats=2, memory=PeakMemory("cpu"))["warmup_calls"] == 1 and len(calls) == 3

    settled = compose_config(["device=cpu", "eval=efficiency"])
    assert settled["eval"]["efficiency"]["warmup_seconds"] == 2.0 and validate(settled).efficiency.warmup_seconds == 2.0
    protocol_before = compose_config(["device=cpu", "eval=efficiency", "eval.efficiency.warmup_seconds=null"])
    assert validate(protocol_before).efficiency.warmup_seconds == 0.0
    earlier = compose_config(["device=cpu", "eval=efficiency"])
    del earlier["eval"]["efficiency"]["warmup_seconds"]
    assert case_id(protocol_before, "m", "cpu") == case_id(earlier, "m", "cpu") != case_id(settled, "m", "cpu")


def test_new_keys_enter_the_case_id_only_when_set():
    import copy

    plain = compose_config(["device=cpu"])
    assert plain["export"] == {"format": "none", "dtype": None, "dir": None} and plain["eval"]["efficiency"]["enabled"] is False
    without_new_keys = copy.deepcopy(plain)
    del without_new_keys["export"], without_new_keys["eval"]["efficiency"]
    assert case_id(plain, "m", "cpu") == case_id(without_new_keys, "m", "cpu")  # ids of earlier cases are unchanged
    exported = copy.deepcopy(plain)
    exported["export"]["format"] = "hf"
    assert case_id(plain, "m", "cpu") != case_id(exported, "m", "cpu")
    exported["export"]["dir"] = "/elsewhere"
    assert case_id(exported, "m", "cpu") == case_id({**exported, "export": {**exported["export"], "dir": None}}, "m", "cpu")
    measured = copy.deepcopy(plain)
    measured["eval"]["efficiency"]["enabled"] = True
    assert case_id(plain, "m", "cpu") != case_id(measured, "m", "cpu")
    efficiency_only = validate(compose_config(["device=cpu", "eval=efficiency"]))
    assert efficiency_only.perplexity.corpora == () and efficiency_only.efficiency.decode_batches == (1, 16)


def test_named_paths_are_measured_instead_of_the_default_ones_and_a_named_path_of_another_pattern_is_listed_as_skipped():
    settings = {"enabled": True, "prefill_batch": 1, "prefill_seqlen": 16, "decode_batches": [1], "decode_prompt": 8, "decode_tokens": 3,
                "warmup": 0, "repeats": 1, "sparse_kernels": "auto"}
    assert validate_efficiency(settings).paths is None
    spec = validate_efficiency({**settings, "paths": ["bitmask_kept", "cusparselt"]})
    assert spec.paths == ("bitmask_kept", "cusparselt")
    plain = compose_config(["device=cpu", "eval=efficiency"])
    named = compose_config(["device=cpu", "eval=efficiency", "eval.efficiency.paths=[bitmask_kept]"])
    assert plain["eval"]["efficiency"]["paths"] is None and named["eval"]["efficiency"]["paths"] == ["bitmask_kept"]
    earlier = compose_config(["device=cpu", "eval=efficiency"])
    del earlier["eval"]["efficiency"]["paths"]
    assert case_id(plain, "m", "cpu") == case_id(earlier, "m", "cpu") != case_id(named, "m", "cpu")
    model = tiny_model("llama")
    linears = [m for name, m in model.named_modules() if name.endswith("proj")]
    result = evaluate_efficiency(model, linears, spec, Execution("cpu"), None, 256)  # unstructured: cusparselt is not one of its paths
    assert {"what": "sparse path cusparselt", "why": "a path for 2:4 sparsity; this case is unstructured"} in result["skipped"]
