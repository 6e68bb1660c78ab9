"""Export of pruned models: hf and compact round trips on tiny models of every family, folders that plain
transformers cannot misread, refused formats, file modes, and the compressed-tensors 0.13 conversion."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from sparsebench.errors import ConfigError, ModelLoadError
from sparsebench.export import BITMASK, BITMASK_24, MARKER, WEIGHTS_FILE, ExportSpec, export_model, load_export, validate_export
from sparsebench.lowrank import Decomposition, SparsePlusLowRankLinear, install_decomposition
from sparsebench.masks import NMPattern, SparsityTarget, select_mask
from sparsebench.models.adapters import adapter_for
from sparsebench.testing.tiny_models import TINY_CONFIGS, tiny_model

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


def _export(tmp_path, fmt, pattern=TWO_FOUR, low_rank=False, dtype=None):
    """A pruned tiny llama exported to ``tmp_path/case``; returns (model, folder)."""
    model = tiny_model("llama")
    dense_parameters = _parameters(model)
    names = _prune(model, pattern)
    if low_rank:
        generator = torch.Generator().manual_seed(1)
        for name in names:
            weight = model.get_submodule(name).weight.data
            install_decomposition(model, name, Decomposition(weight.clone(), torch.randn(2, weight.shape[1], generator=generator), torch.randn(weight.shape[0], 2, generator=generator)))
    section = export_model(model, None, ExportSpec(fmt, dtype, tmp_path), "case", names, pattern, dense_parameters)
    return model, Path(section["path"])


@pytest.mark.parametrize("fmt", ["hf", "compressed"])
def test_every_exported_file_follows_the_umask(tmp_path, fmt):
    """safetensors' save_file writes 0600; the export gives each file 0666 less the umask, the folder 0777 less it."""
    import os

    previous = os.umask(0o022)
    try:
        _, folder = _export(tmp_path, fmt)
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in folder.iterdir()}
    assert any(name.endswith(".safetensors") for name in modes) and len(modes) >= 3
    assert modes == dict.fromkeys(modes, 0o644)
    assert folder.stat().st_mode & 0o777 == 0o755


_PLAIN_LOAD = r"""
import json, sys
if sys.argv[1] == "absent":
    sys.modules["compressed_tensors"] = None  # as if compressed-tensors were not installed
else:
    import compressed_tensors
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig
outcomes = []
for folder in sys.argv[2:]:
    outcome = {}
    own_config = {k: v for k, v in json.load(open(folder + "/config.json")).items() if k != "model_type"}
    for call, load in (
        ("AutoConfig", lambda: AutoConfig.from_pretrained(folder)),
        ("AutoModelForCausalLM", lambda: AutoModelForCausalLM.from_pretrained(folder)),
        ("with a config", lambda: AutoModelForCausalLM.from_pretrained(folder, config=LlamaConfig(**own_config))),
    ):
        try:
            load()
            outcome[call] = "loaded"
        except Exception as error:
            outcome[call] = f"{type(error).__name__}: {error}"
    outcomes.append(outcome)
print(json.dumps(outcomes))
"""


@pytest.mark.parametrize("compressed_tensors", ["installed", "absent"])
def test_plain_transformers_refuses_a_folder_only_load_export_reads(tmp_path, compressed_tensors):
    """In a fresh process, for a compressed folder and an hf folder with low-rank factors: AutoConfig and
    from_pretrained raise an error naming our loader; with a config passed by hand, from_pretrained finds
    no weights it knows (never a model with random weights)."""
    import subprocess
    import sys

    if compressed_tensors == "installed":
        pytest.importorskip("compressed_tensors")
    folders = [_export(tmp_path / "compressed", "compressed")[1], _export(tmp_path / "low_rank", "hf", low_rank=True)[1]]
    run = subprocess.run([sys.executable, "-c", _PLAIN_LOAD, compressed_tensors, *map(str, folders)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for outcome in json.loads(run.stdout.strip().splitlines()[-1]):
        for call in ("AutoConfig", "AutoModelForCausalLM"):
            assert outcome[call].startswith("ValueError: The checkpoint you are trying to load has model type `sparsebench-export: load it with sparsebench.export.load_export"), outcome[call]
            assert "sparsebench model.path=<folder>" in outcome[call]
        assert outcome["with a config"].startswith("OSError") and "model.safetensors" in outcome["with a config"], outcome["with a config"]


@pytest.mark.parametrize("fmt", ["sparse-bitmask-v2", "/tmp/evil_format.py", "evil_package.compressors:Evil", None])
def test_a_format_we_do_not_write_is_refused_before_any_import(tmp_path, fmt):
    import sys

    _, folder = _export(tmp_path, "compressed")
    config = json.loads((folder / "config.json").read_text())
    config["sparsebench_export"]["format"] = fmt
    (folder / "config.json").write_text(json.dumps(config))
    modules = set(sys.modules)
    with pytest.raises(ModelLoadError, match=rf"format {re.escape(repr(fmt))} is not one that sparsebench writes: allowed values are dense, sparse-bitmask, sparse-24-bitmask"):
        load_export(folder)
    assert set(sys.modules) == modules  # nothing was imported


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda config: config.update(auto_map={"AutoConfig": "evil.EvilConfig"}), r"names remote code \(auto_map\)"),
        (lambda config: config["sparsebench_export"].update(model_type="evil"), r"model_type 'evil' is not an architecture that transformers ships"),
        (lambda config: config["sparsebench_export"].update(weights="../elsewhere.safetensors"), r"the only weights file an export has is sparsebench_model.safetensors"),
    ],
)
def test_a_folder_that_names_code_or_other_files_is_refused(tmp_path, edit, message):
    _, folder = _export(tmp_path, "compressed")
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        load_export(folder)


def test_a_legacy_quantization_config_with_another_format_is_refused_before_any_import(tmp_path):
    import sys

    from sparsebench.compressed_tensors_013 import to_compressed_tensors_013

    _, folder = _export(tmp_path, "compressed")
    legacy = to_compressed_tensors_013(folder, tmp_path / "legacy")
    config = json.loads((legacy / "config.json").read_text())
    config["quantization_config"]["sparsity_config"]["format"] = "/tmp/evil_format.py"
    (legacy / "config.json").write_text(json.dumps(config))
    modules = set(sys.modules)
    with pytest.raises(ModelLoadError, match=r"format '/tmp/evil_format.py' is not one that sparsebench writes"):
        load_export(legacy)
    assert set(sys.modules) == modules


def _with_sparse_groups(model, names):
    """Zero whole groups of four and leave single non-zeros in others: 2:4 groups with fewer than two non-zeros,
    where compressed-tensors 0.13's topk may keep other zeros than ours."""
    for name in names[:3]:
        weight = model.get_submodule(name).weight.data
        weight[0, :8] = 0.0
        weight[1, :4] = torch.tensor([0.0, 0.0, 0.0, 0.5])


@pytest.mark.parametrize("pattern", [None, TWO_FOUR], ids=["unstructured", "2of4"])
def test_compressed_tensors_013_decompresses_the_converted_folder_to_our_weights(tmp_path, pattern):
    """``to_compressed_tensors_013`` writes 0.13's layout; 0.13's own ModelCompressor (if installed) and
    load_export both give back every weight bit for bit."""
    from transformers import AutoModelForCausalLM

    from sparsebench.compressed_tensors_013 import to_compressed_tensors_013

    model = tiny_model("llama")
    names = _prune(model, pattern)
    _with_sparse_groups(model, names)
    section = export_model(model, None, ExportSpec("compressed", "float16", tmp_path / "models"), "case", names, pattern, _parameters(model))
    legacy = to_compressed_tensors_013(section["path"], tmp_path / "legacy")
    assert sorted(path.name for path in legacy.glob("*.safetensors")) == ["model.safetensors"]
    config = json.loads((legacy / "config.json").read_text())
    assert config["model_type"] == "llama" and "sparsebench_export" not in config
    assert config["quantization_config"]["sparsity_config"]["format"] == (BITMASK_24 if pattern else BITMASK)
    expected = model.half()
    _assert_same_tensors(expected, load_export(legacy))
    try:
        from compressed_tensors.compressors import ModelCompressor
    except ImportError:
        pytest.skip("compressed-tensors is not installed")
    from importlib.metadata import version

    if version("compressed-tensors") != "0.13.0":
        pytest.skip(f"compressed-tensors {version('compressed-tensors')} has no sparse compressors (0.13.0 has)")
    from transformers import AutoConfig

    quantization = config.pop("quantization_config")
    decompressed = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float16)
    ModelCompressor.from_compression_config(quantization).decompress(str(legacy), decompressed)
    for name in names:
        assert torch.equal(_bits(decompressed.get_submodule(name).weight.data), _bits(expected.get_submodule(name).weight.data)), name


def test_only_a_compressed_folder_converts_to_the_013_layout(tmp_path):
    from sparsebench.compressed_tensors_013 import to_compressed_tensors_013

    _, folder = _export(tmp_path / "hf", "hf")
    with pytest.raises(ModelLoadError, match="not an export=compressed folder .* loads with transformers as it is"):
        to_compressed_tensors_013(folder, tmp_path / "out")
    _, folder = _export(tmp_path / "low", "compressed", low_rank=True)
    with pytest.raises(ModelLoadError, match="low-rank factors .* have no compressed-tensors layout"):
        to_compressed_tensors_013(folder, tmp_path / "out")
