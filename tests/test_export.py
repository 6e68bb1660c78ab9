"""Export of pruned models: hf and compact round trips on tiny models of every family, folders that plain
transformers cannot misread, refused formats, file modes, and the compressed-tensors 0.13 conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsebench.errors import ConfigError
from sparsebench.export import BITMASK, BITMASK_24, MARKER, WEIGHTS_FILE, ExportSpec, export_model, load_export, validate_export
from sparsebench.lowrank import Decomposition, SparsePlusLowRankLinear, install_decomposition
from sparsebench.masks import NMPattern, SparsityTarget, select_mask
from sparsebench.models.adapters import adapter_for
from tiny_models import TINY_CONFIGS, tiny_model

TWO_FOUR = NMPattern(2, 4)


def _prune(model, pattern, ratio=0.5):
    """Magnitude-prune every prunable linear in place; returns their full names."""
    adapter = adapter_for("auto", model.config.model_type)
    names = []
    for index, block in enumerate(adapter.get_blocks(model)):
        for name, linear in adapter.get_linears(block).items():
            weight = linear.weight.data
            weight.masked_fill_(select_mask(weight.abs(), SparsityTarget(ratio, pattern)), 0.0)
            names.append(f"{adapter.blocks}.{index}.{name}")
    return names


def _bits(tensor):
    """A tensor's raw bits (so -0.0 and 0.0 differ): bit-identical means these are equal."""
    return tensor.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])


def _assert_same_tensors(model, loaded):
    expected, actual = model.state_dict(), loaded.state_dict()
    assert set(expected) == set(actual)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(_bits(actual[name]), _bits(tensor)), f"{name} differs after the round trip"


def _parameters(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("fmt", ["hf", "compressed"])
@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("pattern", [None, TWO_FOUR], ids=["unstructured", "2of4"])
def test_round_trip_is_bit_identical(tmp_path, family, pattern, fmt):
    model = tiny_model(family)
    dense_parameters = _parameters(model)
    names = _prune(model, pattern)
    section = export_model(model, None, ExportSpec(fmt, None, tmp_path), "case", names, pattern, dense_parameters)
    folder = Path(section["path"])
    assert folder == tmp_path / "case" and (folder / "config.json").exists()
    loaded = load_export(folder)
    _assert_same_tensors(model, loaded)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert section["dense_weight_bytes"] == dense_parameters * 4
    if fmt == "compressed":
        config = json.loads((folder / "config.json").read_text())
        stored = config["sparsebench_export"]
        assert config["model_type"] == MARKER and stored["model_type"] == model.config.model_type
        assert stored["format"] == (BITMASK_24 if pattern else BITMASK) and stored["weights"] == WEIGHTS_FILE
        assert sorted(path.name for path in folder.glob("*.safetensors")) == [WEIGHTS_FILE]
        assert sorted(stored["targets"]) == sorted(names)
        assert section["weight_bytes"] < section["dense_weight_bytes"]  # half the values plus a bitmask (and row offsets)
    else:
        assert section["loads_with"] == "AutoModelForCausalLM.from_pretrained"
        assert section["weight_bytes"] >= section["dense_weight_bytes"]  # zeros are stored


def test_compressed_2of4_stores_half_the_values_and_a_bitmask(tmp_path):
    from safetensors import safe_open

    model = tiny_model("llama")
    names = _prune(model, TWO_FOUR)
    section = export_model(model, None, ExportSpec("compressed", "float16", tmp_path), "case", names, TWO_FOUR, _parameters(model))
    assert section["dtype"] == "float16" and section["dense_weight_bytes"] == _parameters(model) * 2
    with safe_open(str(Path(section["path"]) / WEIGHTS_FILE), "pt") as stored:
        q_proj = "model.layers.0.self_attn.q_proj"
        weight = model.get_submodule(q_proj).weight
        assert stored.get_tensor(f"{q_proj}.compressed").shape == (weight.shape[0], weight.shape[1] // 2)
        assert stored.get_tensor(f"{q_proj}.compressed").dtype == torch.float16
        assert stored.get_tensor(f"{q_proj}.bitmask").shape == (weight.shape[0], weight.shape[1] // 8)
    loaded = load_export(section["path"])
    assert loaded.model.layers[0].self_attn.q_proj.weight.dtype == torch.float16
    assert torch.equal(loaded.model.layers[0].self_attn.q_proj.weight, model.model.layers[0].self_attn.q_proj.weight.half())


@pytest.mark.parametrize("fmt", ["hf", "compressed"])
def test_sparse_plus_low_rank_loads_back_to_the_same_model(tmp_path, fmt):
    model = tiny_model("llama")
    dense_parameters = _parameters(model)
    names = _prune(model, TWO_FOUR)
    generator = torch.Generator().manual_seed(1)
    for name in names:
        weight = model.get_submodule(name).weight.data
        rows, cols = weight.shape
        install_decomposition(model, name, Decomposition(weight.clone(), torch.randn(3, cols, generator=generator), torch.randn(rows, 3, generator=generator)))
    section = export_model(model, None, ExportSpec(fmt, None, tmp_path), "case", names, TWO_FOUR, dense_parameters)
    assert section["low_rank"]["linears"] == len(names) and section["loads_with"] == "sparsebench.export.load_export"
    loaded = load_export(section["path"])
    assert isinstance(loaded.model.layers[1].mlp.down_proj, SparsePlusLowRankLinear)
    _assert_same_tensors(model, loaded)
    ids = torch.randint(0, 300, (2, 16), generator=generator)
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_impossible_exports_fail_in_validation(tmp_path):
    with pytest.raises(ConfigError, match=r"export=compressed: the compact layouts store .* not sparsity.pattern=4:8; use export=hf"):
        validate_export({"format": "compressed"}, NMPattern(4, 8), tmp_path)
    with pytest.raises(ConfigError, match=r"export.format='zip': allowed values are none, hf, compressed"):
        validate_export({"format": "zip"}, None, tmp_path)
    with pytest.raises(ConfigError, match=r"export.dtype='int8'"):
        validate_export({"format": "hf", "dtype": "int8"}, None, tmp_path)
    assert validate_export({"format": "none"}, NMPattern(4, 8), tmp_path) is None
    assert validate_export({"format": "hf", "dir": None}, NMPattern(4, 8), tmp_path).directory == tmp_path / "models"


def test_an_export_is_whole_or_absent(tmp_path):
    """A failure while writing leaves no folder (and no temporary one); a stale temporary one is removed."""
    model = tiny_model("llama")
    names = _prune(model, TWO_FOUR)

    class BrokenTokenizer:
        def save_pretrained(self, folder):
            raise OSError(28, "No space left on device")

    stale = tmp_path / ".case.partial-old"
    stale.mkdir()
    with pytest.raises(OSError, match="No space left"):
        export_model(model, BrokenTokenizer(), ExportSpec("hf", None, tmp_path), "case", names, TWO_FOUR, _parameters(model))
    assert list(tmp_path.iterdir()) == []
    section = export_model(model, None, ExportSpec("hf", None, tmp_path), "case", names, TWO_FOUR, _parameters(model))
    assert [path.name for path in tmp_path.iterdir()] == ["case"] and section["path"] == str(tmp_path / "case")
