"""LoRA recovery fine-tuning (``finetune=lora``): adapters, loop, mask, the case, its id and its errors."""

from __future__ import annotations

import itertools
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import compose_config, tiny_case_overrides
from sparsebench.testing.tiny_models import TINY_CONFIGS, VOCAB, tiny_model
from sparsebench.config import validate
from sparsebench.errors import ConfigError
from sparsebench.finetune.lora import adapter_parameters, attach_lora, base_linear, merge_keeping_mask, target_names
from sparsebench.finetune.loop import TrainSettings, train
from sparsebench.finetune.spec import FinetuneConfig, validate_finetune
from sparsebench.models.adapters import adapter_for
from sparsebench.identity import Facts, identity
from sparsebench.results import case_id
from sparsebench.runner import run_case

RANK, ALPHA = 4, 8.0  # scaling alpha / r = 2


def _randomly_pruned(family: str):
    """A tiny model of ``family`` with half of every pruned linear's weights set to zero."""
    model = tiny_model(family)
    adapter = adapter_for("auto", model.config.model_type)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in adapter.get_blocks(model):
            for linear in adapter.get_linears(block).values():
                linear.weight.mul_(torch.rand(linear.weight.shape, generator=generator) >= 0.5)
    return model, adapter


def _pruned_weights(model, adapter) -> dict[str, torch.Tensor]:
    return {
        f"{adapter.blocks}.{index}.{name}": base_linear(module).weight.detach().clone()
        for index, block in enumerate(adapter.get_blocks(model))
        for name, module in adapter.get_linears(block).items()
    }


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_lora_learns_a_fixed_batch_and_both_modes_keep_the_mask(family):
    model, adapter = _randomly_pruned(family)
    pruned = _pruned_weights(model, adapter)
    names = target_names(model, adapter, None)
    assert sorted(names) == sorted(pruned)  # every pruned linear, and nothing else
    torch.manual_seed(0)
    trainable = attach_lora(model, names, RANK, ALPHA, dropout=0.0)
    assert trainable == sum(RANK * (w.shape[0] + w.shape[1]) for w in pruned.values())  # r (out + in) per linear

    batch = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(2))
    record = train(model, itertools.repeat(batch), TrainSettings(steps=10, learning_rate=1e-2, schedule="constant"), "cpu", progress=False)
    assert record.losses[-1] < record.losses[0] - 0.2, record.losses
    assert record.tokens_seen == 10 * batch.numel()

    # adapters kept separate: the frozen weights are bit for bit the pruned ones
    for name, weight in _pruned_weights(model, adapter).items():
        assert torch.equal(weight, pruned[name]), name
    # LoRA (Hu et al. 2021, eq. 3): h = W x + b + (alpha / r) B A x
    layer = model.get_submodule(names[0])
    down, up = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    assert up.abs().sum() > 0  # B starts at zero; training moved it
    x = torch.randn(3, down.shape[1])
    expected = F.linear(x, pruned[names[0]], base_linear(layer).bias) + (ALPHA / RANK) * (x @ down.T @ up.T)
    torch.testing.assert_close(layer(x), expected)

    # merged: W <- (W + (alpha / r) B A) * (W != 0), and the adapter modules are gone
    expected_merged = {}
    for name in names:
        lora = model.get_submodule(name)
        delta = (ALPHA / RANK) * lora.lora_B["default"].weight.detach() @ lora.lora_A["default"].weight.detach()
        expected_merged[name] = (pruned[name] + delta) * (pruned[name] != 0)
    merge_keeping_mask(model, names)
    assert adapter_parameters(model) == 0
    for name in names:
        module = model.get_submodule(name)
        assert isinstance(module, nn.Linear) and not hasattr(module, "lora_A")
        assert torch.equal(module.weight == 0, pruned[name] == 0), name
        torch.testing.assert_close(module.weight, expected_merged[name])


def test_target_modules_pick_linears_by_name():
    model, adapter = _randomly_pruned("llama")
    names = target_names(model, adapter, ("q_proj", "self_attn.v_proj"))
    assert names == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


def test_lora_yaml_equals_the_schema_defaults():
    composed = compose_config(["model.path=unused", "finetune=lora"])["finetune"]
    assert composed == {**asdict(FinetuneConfig()), "name": "lora"}


def _lora_case(tiny_model_dirs, results, cache_dir, *extra):
    finetune = ["finetune=lora", "finetune.steps=4", "finetune.seqlen=32", "finetune.batch_size=2", "finetune.log_every=2",
                "finetune.dataset=wikitext2", "finetune.learning_rate=1e-2", *extra]
    return compose_config(tiny_case_overrides(tiny_model_dirs["llama"], results, cache_dir, "wanda", finetune))


def test_case_with_lora_records_before_and_after_and_keeps_sparsity(tiny_model_dirs, tmp_path, cache_dir):
    documents = {}
    for merge in (False, True):
        config = _lora_case(tiny_model_dirs, tmp_path / "results", cache_dir, f"finetune.merge={str(merge).lower()}")
        documents[merge] = document = run_case(validate(config))
        assert document["status"] == "ok", document.get("error")
        section = document["finetune"]
        assert section["merged"] is merge and section["steps"] == 4 and section["tokens_seen"] == 4 * 2 * 32
        assert section["loss_curve"]["step"] == [2, 4] and len(section["loss_curve"]["loss"]) == 2
        assert section["trainable_parameters"] > 0 and section["train_s"] > 0
        assert section["adapter_parameters_kept"] == (0 if merge else section["trainable_parameters"])
        assert section["sparsity"]["zeros_after"] == section["sparsity"]["zeros_before"]
        assert document["sparsity"]["achieved"] == pytest.approx(0.5, abs=0.02)  # checked again after fine-tuning
        metrics = document["metrics"]
        assert set(metrics) == {"ppl_before_finetune", "ppl"}
        assert metrics["ppl"]["wikitext2"]["ppl"] != metrics["ppl_before_finetune"]["wikitext2"]["ppl"]
        assert {"finetune_s", "eval_ppl_before_finetune_wikitext2_s", "eval_ppl_wikitext2_s"} <= set(document["timings"])
        assert document["notes"]["finetune_overlaps_evaluation"] is True  # the tiny case trains on the evaluated file
    assert "_lora_" in documents[False]["case_id"] and documents[False]["case_id"] != documents[True]["case_id"]


def test_case_id_has_finetune_only_when_it_fine_tunes(tiny_model_dirs, tmp_path, cache_dir):
    plain = compose_config(tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir))
    before_finetune_existed = {key: value for key, value in plain.items() if key != "finetune"}
    assert case_id(plain, "m", "cpu") == case_id(before_finetune_existed, "m", "cpu")  # old ids are unchanged
    with_steps = compose_config(tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, extra=["finetune.steps=7"]))
    assert case_id(with_steps, "m", "cpu") == case_id(plain, "m", "cpu")  # finetune=none reads no finetune key
    lora = _lora_case(tiny_model_dirs, tmp_path, cache_dir)
    assert case_id(lora, "m", "cpu") != case_id(plain, "m", "cpu")
    how_to_run = _lora_case(tiny_model_dirs, tmp_path, cache_dir, "finetune.gradient_checkpointing=true", "finetune.log_every=1")
    assert identity("case", how_to_run, Facts("cpu")) == identity("case", lora, Facts("cpu"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["finetune.rank=0"], "finetune.rank=0: must be an integer >= 1"),
        (["finetune.dropout=1.0"], "finetune.dropout=1.0: must be a number in [0, 1)"),
        (["finetune.learning_rate=0"], "finetune.learning_rate=0.0: must be a number in (0, inf)"),
        (["finetune.schedule=step"], "finetune.schedule='step': allowed values are constant, linear, cosine"),
        (["finetune.dataset=pile"], "finetune.dataset='pile': allowed values are c4, ptb, wikitext2"),
        (["finetune.split=dev"], "finetune.split='dev': allowed values are train, validation, test"),
        (["finetune.autocast=fp8"], "finetune.autocast='fp8': allowed values are auto, none, bfloat16, float16"),
        (["finetune.warmup_steps=200"], "finetune.warmup_steps=200: must be smaller than finetune.steps=200"),
        (["model.family=llama", "finetune.target_modules=[q_proj,wq]"], "finetune.target_modules: 'wq' is not a pruned linear of family 'llama'; allowed: self_attn.q_proj"),
        (["finetune.autocast=bfloat16"], "finetune.autocast=bfloat16: half-precision autocast is for GPUs"),
        (["finetune.name=qlora"], "finetune.name='qlora': allowed values are none, lora"),
    ],
)
def test_bad_finetune_keys_are_one_line_errors_before_the_model_loads(overrides, message, monkeypatch, tmp_path):
    monkeypatch.setattr("sparsebench.runner.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    config = compose_config(["model.path=unused-model", "device=cpu", f"results_dir={tmp_path}", "finetune=lora", *overrides])
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_unknown_key_and_missing_peft_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"^finetune.lr: not a finetune key; allowed keys are name, rank, alpha"):
        validate_finetune({"name": "lora", "lr": 1e-3})
    assert validate_finetune({"name": "none", "steps": 3}) is None
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "peft" else object())
    with pytest.raises(ConfigError, match=r"pip install 'sparsebench\[finetune\]'"):
        validate_finetune({"name": "lora"})


def test_wandb_mirror_logs_the_loss_curve_as_a_time_series():
    from sparsebench.tracking.wandb_mirror import case_tags, flat_summary, log_loss_curve

    class Run:
        def __init__(self):
            self.defined, self.logged = {}, []

        def define_metric(self, name, step_metric=None):
            self.defined[name] = step_metric

        def log(self, values):
            self.logged.append(values)

    curve = {"every": 2, "step": [2, 4, 5], "loss": [3.0, 2.5, 2.25]}
    run = Run()
    log_loss_curve(run, curve)
    assert run.defined["finetune/loss"] == "finetune/step"
    assert run.logged == [{"finetune/step": 2, "finetune/loss": 3.0}, {"finetune/step": 4, "finetune/loss": 2.5}, {"finetune/step": 5, "finetune/loss": 2.25}]
    document = {
        "status": "ok", "case_id": "c", "config": {"model": {"path": "p"}, "metric": {"name": "wanda"}, "allocator": {"name": "uniform"}, "sparsity": {"ratio": 0.5}, "finetune": {"name": "lora"}},
        "metrics": {"ppl": {"wikitext2": {"ppl": 20.0}}, "ppl_before_finetune": {"wikitext2": {"ppl": 30.0}}},
        "finetune": {"loss_first": 4.0, "trainable_parameters": 10, "merged": False, "loss_curve": curve},
    }
    summary = flat_summary(document)
    assert summary["ppl/wikitext2"] == 20.0 and summary["ppl_before_finetune/wikitext2"] == 30.0
    assert summary["finetune/loss_first"] == 4.0 and "finetune/merged" not in summary
    assert "finetune:lora" in case_tags(document)
