"""Export of a pruned model: a Hugging Face folder that every tool loads, or a compact folder of our own.

``export=hf`` writes a plain Hugging Face folder (``model.safetensors``, ``config.json``,
``generation_config.json``, the tokenizer): pruned weights stored dense (zeros included), in the
dtype asked for. ``AutoModelForCausalLM.from_pretrained`` loads it exactly; it is the serving
artifact (what llm-compressor >= 0.11 writes for pruned models too).

``export=compressed`` stores each pruned linear in compressed-tensors 0.13's layouts
(``sparsebench.sparse_layout``: ``sparse-bitmask`` for any sparsity, ``sparse-24-bitmask`` for 2:4)
under 0.13's tensor names (``<linear>.compressed``, ``.bitmask``, ``.shape``, ``.row_offsets``),
written with ``safetensors`` alone. No mainstream tool reads these layouts today (compressed-tensors
dropped them in 0.15, vLLM in 0.19), and the current compressed-tensors with transformers 5 would
load such a folder with its pruned weights freshly initialised, without an error. So a folder that
needs our loader cannot be taken for a Hugging Face model:

- its ``config.json`` has ``model_type`` = ``MARKER`` (a sentence naming ``load_export``), so
  ``AutoConfig`` and ``AutoModel*.from_pretrained`` raise "model type `<MARKER>` ... not recognize"
  whatever compressed-tensors is installed; the model's own type and the layout sit under
  ``sparsebench_export`` (``model_type``, ``format``, ``targets``, ``weights``);
- its tensors are in ``WEIGHTS_FILE``, a name transformers never reads, so passing a config by hand
  finds no weights instead of loading random ones.

An ``hf`` export of a sparse-plus-low-rank model (``metric=hassle_free``) is marked the same way
(``format`` ``dense``): S is each linear's ``weight`` and the dense factors A and B are
``<linear>.low_rank_down.weight`` and ``<linear>.low_rank_up.weight``, which a transformers
architecture has no place for; ``sparsebench_low_rank.json`` lists ``{linear: rank}``.

``load_export`` reads either kind (and the legacy compressed-tensors 0.13 layout, e.g. from
``to_compressed_tensors_013``) bit for bit. It checks the folder's format against the ones written
here and its ``model_type`` against transformers' own architectures before anything else, and never
imports or runs code named in the folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sparsebench import sparse_layout
from sparsebench.errors import ConfigError, ModelLoadError
from sparsebench.files import share_folder
from sparsebench.lowrank import attach_low_rank, low_rank_ranks
from sparsebench.masks import NMPattern
from sparsebench.sparse_layout import BITMASK, BITMASK_24

log = logging.getLogger(__name__)

FORMATS = ("none", "hf", "compressed")
EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LOW_RANK_FILE = "sparsebench_low_rank.json"
WEIGHTS_FILE = "sparsebench_model.safetensors"
HF_WEIGHTS_FILE = "model.safetensors"
DENSE = "dense"
STORED_FORMATS = (DENSE, BITMASK, BITMASK_24)  # the formats of the pruned linears that this module writes and reads
MARKER = "sparsebench-export: load it with sparsebench.export.load_export(folder) or the CLI sparsebench model.path=<folder>"
SECTION = "sparsebench_export"


@dataclass(frozen=True)
class ExportSpec:
    format: str  # hf | compressed
    dtype: str | None  # None: the dtype the case ran in
    directory: Path  # <results_dir>/models unless export.dir is set


def compressed_format(pattern: NMPattern | None) -> str:
    """The compact layout of a pattern (raises ``ConfigError`` if none fits)."""
    if pattern is None:
        return BITMASK
    if (pattern.n, pattern.m) == (2, 4):
        return BITMASK_24
    raise ConfigError(
        f"export=compressed: the compact layouts store unstructured sparsity ({BITMASK}) and 2:4 ({BITMASK_24}), "
        f"not sparsity.pattern={pattern}; use export=hf, or sparsity.pattern=2:4 or unstructured"
    )


def validate_export(config: dict | None, pattern: NMPattern | None, results_dir: Path) -> ExportSpec | None:
    """The export of a case from ``config['export']``; None for ``export=none``. Fails before any model loads."""
    config = config or {}
    fmt = config.get("format", "none")
    if fmt not in FORMATS:
        raise ConfigError(f"export.format={fmt!r}: allowed values are {', '.join(FORMATS)}")
    dtype = config.get("dtype")
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise ConfigError(f"export.dtype={dtype!r}: allowed values are null (the case's dtype), {', '.join(EXPORT_DTYPES)}")
    if fmt == "none":
        return None
    if fmt == "compressed":
        compressed_format(pattern)
    directory = Path(config["dir"]).expanduser() if config.get("dir") else Path(results_dir) / "models"
    return ExportSpec(fmt, dtype, directory)


def folder_bytes(folder: Path) -> tuple[int, int]:
    """(bytes of every file in ``folder``, bytes of its ``*.safetensors`` files)."""
    files = [path for path in Path(folder).rglob("*") if path.is_file()]
    return sum(p.stat().st_size for p in files), sum(p.stat().st_size for p in files if p.suffix == ".safetensors")


def _state_dict(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's tensors at ``dtype`` (floating ones only), tied weights once, as ``save_pretrained`` stores them."""
    state = {}
    seen: dict[int, str] = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr(), tensor.shape
        if tensor.numel() and key in seen:  # a tied weight (lm_head = embeddings): transformers re-ties on load
            continue
        seen[key] = name
        state[name] = tensor.detach().to("cpu", dtype if tensor.is_floating_point() else tensor.dtype).contiguous()
    return state


def export_model(model: nn.Module, tokenizer, spec: ExportSpec, case: str, pruned_linears: list[str], pattern: NMPattern | None, dense_parameters: int) -> dict:
    """Write the model to ``spec.directory/<case>/`` and return the result document's ``export`` section.

    ``pruned_linears``: the full module names of the pruned linears (the ones compressed);
    ``dense_parameters``: the parameter count of the unpruned model, for the dense size at the same dtype.
    """
    started = time.perf_counter()
    final = spec.directory / case
    spec.directory.mkdir(parents=True, exist_ok=True)
    for stale in spec.directory.glob(f".{case}.partial-*"):  # left by a killed export of this case
        shutil.rmtree(stale, ignore_errors=True)
    # Written beside its final place and renamed there at the end: an export is whole or absent.
    folder = Path(tempfile.mkdtemp(dir=spec.directory, prefix=f".{case}.partial-"))
    try:
        section = _write_export(model, tokenizer, spec, folder, final, pruned_linears, pattern, dense_parameters, started)
        share_folder(folder)  # safetensors writes 0600 whatever the umask
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(folder, final)
    return section


def _write_export(model, tokenizer, spec: ExportSpec, folder: Path, final: Path, pruned_linears, pattern, dense_parameters: int, started: float) -> dict:
    dtype = EXPORT_DTYPES[spec.dtype] if spec.dtype else next(model.parameters()).dtype
    state = _state_dict(model, dtype)
    ranks = low_rank_ranks(model)
    section: dict = {"format": spec.format, "path": str(final), "dtype": str(dtype).removeprefix("torch.")}
    stored = compressed_format(pattern) if spec.format == "compressed" else DENSE
    ours = stored != DENSE or bool(ranks)  # only load_export reads this folder right: transformers must refuse it
    _write_config(model, dtype, folder)
    if ours:
        marker = {"format": stored, "targets": [], "weights": WEIGHTS_FILE}
        if stored != DENSE:
            marker.update(targets=list(pruned_linears), global_sparsity=_compress(state, pruned_linears, stored))
            section["compression"] = {"layout": "compressed-tensors 0.13's, written by sparsebench.sparse_layout", "sparsity_format": stored, "compressed_linears": len(pruned_linears)}
        _mark_config(folder, marker)
    weights = WEIGHTS_FILE if ours else HF_WEIGHTS_FILE
    _save_tensors(state, folder / weights)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if ranks:
        (folder / LOW_RANK_FILE).write_text(json.dumps(ranks, indent=1) + "\n")
        section["low_rank"] = {"file": LOW_RANK_FILE, "linears": len(ranks), "stored": "dense, beside each sparse weight"}
    total_bytes, weight_bytes = folder_bytes(folder)
    element = torch.empty((), dtype=dtype).element_size()
    section.update(
        {
            "bytes_on_disk": total_bytes,
            "weight_bytes": weight_bytes,
            "dense_weight_bytes": dense_parameters * element,
            "dense_weight_bytes_method": f"parameters of the unpruned model ({dense_parameters}) x {element} bytes (computed, not saved)",
            "weight_bytes_vs_dense": weight_bytes / (dense_parameters * element),
            "seconds": time.perf_counter() - started,
            "loads_with": "AutoModelForCausalLM.from_pretrained" if weights == HF_WEIGHTS_FILE else "sparsebench.export.load_export",
        }
    )
    log.info("exported %s (%s, %.1f MB of weights, %.3f of dense)", final, spec.format, weight_bytes / 1e6, section["weight_bytes_vs_dense"])
    return section


def _compress(state: dict[str, torch.Tensor], linears: list[str], layout: str) -> float:
    """Replace each linear's ``weight`` in ``state`` by its tensors in ``layout``; returns their share of zeros."""
    zeros = total = 0
    for name in linears:
        weight = state.pop(f"{name}.weight")
        zeros, total = zeros + int((weight == 0).sum()), total + weight.numel()
        state.update(sparse_layout.named_tensors(name, sparse_layout.pack(weight, layout)))
    return zeros / max(total, 1)


def _write_config(model: nn.Module, dtype: torch.dtype, folder: Path) -> None:
    """``config.json`` (at the export dtype) and ``generation_config.json``, as ``save_pretrained`` writes them."""
    original_dtype = model.config.dtype
    model.config.dtype = dtype
    try:
        model.config.save_pretrained(folder)
    finally:
        model.config.dtype = original_dtype
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)


def _mark_config(folder: Path, export: dict) -> None:
    """Replace ``model_type`` in ``config.json`` by ``MARKER`` (the model's own goes under ``SECTION``)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config[SECTION] = {"model_type": config["model_type"], **export}
    config["model_type"] = MARKER
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """One safetensors file holding the tensors under the model's own names (``save_pretrained`` would
    rename some, e.g. GPT-NeoX's head)."""
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={"format": "pt"})


@dataclass(frozen=True)
class StoredExport:
    """What a folder holds, read from its ``config.json`` without running anything named there."""

    config: dict  # the model's transformers config, its own model_type restored, no export keys
    format: str  # one of STORED_FORMATS
    targets: tuple[str, ...]  # the linears stored in a sparse layout
    weights: Path
    ranks: dict[str, int]  # {linear: rank} of sparse-plus-low-rank linears


def needs_load_export(folder: str | Path) -> bool:
    """Whether ``folder`` is an export that only ``load_export`` reads right: marked by ``MARKER``, in the
    legacy compressed-tensors layout, or holding low-rank factors."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        return False
    config = json.loads(config_path.read_text())
    return config.get("model_type") == MARKER or _is_legacy_sparsity(config) or (folder / LOW_RANK_FILE).exists()


def _is_legacy_sparsity(config: dict) -> bool:
    quantization = config.get("quantization_config")
    return isinstance(quantization, dict) and quantization.get("quant_method") == "compressed-tensors" and "sparsity_config" in quantization


def read_export(folder: str | Path) -> StoredExport:
    """Check a folder's ``config.json`` against what ``export_model`` (or ``to_compressed_tensors_013``)
    writes, before any import: a format other than ``STORED_FORMATS`` (a name, a path, a module), a
    quantization, remote code or an architecture transformers does not ship is refused."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{folder}: no config.json; not a model folder")
    config = json.loads(config_path.read_text())
    if "auto_map" in config:
        raise ModelLoadError(f"{folder}: config.json names remote code (auto_map); load_export loads transformers' own architectures only")
    ranks_file = folder / LOW_RANK_FILE
    ranks = {str(name): int(rank) for name, rank in json.loads(ranks_file.read_text()).items()} if ranks_file.exists() else {}
    if config.get("model_type") == MARKER:
        export = config.pop(SECTION, None)
        if not isinstance(export, dict):
            raise ModelLoadError(f"{folder}: config.json has our marker but no {SECTION} section")
        fmt, targets, weights = export.get("format"), export.get("targets", []), export.get("weights", WEIGHTS_FILE)
        config["model_type"] = export.get("model_type")
        if weights != WEIGHTS_FILE:
            raise ModelLoadError(f"{folder}: {SECTION}.weights={weights!r}: the only weights file an export has is {WEIGHTS_FILE}")
    elif "quantization_config" in config:
        quantization = config.pop("quantization_config")
        sparsity = quantization.get("sparsity_config") if isinstance(quantization, dict) else None
        if not _is_legacy_sparsity({"quantization_config": quantization}) or quantization.get("config_groups") or not isinstance(sparsity, dict):
            raise ModelLoadError(f"{folder}: its quantization_config is not the compressed-tensors sparsity layout that load_export reads (no quantization)")
        fmt, targets, weights = sparsity.get("format"), sparsity.get("targets") or [], HF_WEIGHTS_FILE
    else:
        fmt, targets, weights = DENSE, [], HF_WEIGHTS_FILE
    if fmt not in STORED_FORMATS:
        raise ModelLoadError(f"{folder}: format {fmt!r} is not one that sparsebench writes: allowed values are {', '.join(STORED_FORMATS)}")
    if not isinstance(targets, list) or not all(isinstance(name, str) for name in targets):
        raise ModelLoadError(f"{folder}: the targets must be a list of module names")
    from transformers import CONFIG_MAPPING

    if config.get("model_type") not in CONFIG_MAPPING:
        raise ModelLoadError(f"{folder}: model_type {config.get('model_type')!r} is not an architecture that transformers ships")
    return StoredExport(config, fmt, tuple(targets), folder / weights, ranks)


def export_config(stored: StoredExport):
    """The transformers config of an export (built from transformers' own config class of its ``model_type``)."""
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[stored.config["model_type"]].from_dict(dict(stored.config))


def load_export(folder: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """Load a folder written by ``export_model`` (either format), or by ``to_compressed_tensors_013``, into the same model, on the CPU."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    stored = read_export(folder)
    config = export_config(stored)
    if stored.weights.name == HF_WEIGHTS_FILE and not stored.targets and not stored.ranks:  # a plain Hugging Face folder
        return AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=dtype or config.dtype, trust_remote_code=False).eval()
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or config.dtype).eval()
    attach_low_rank(model, stored.ranks)
    state = load_file(stored.weights)
    for name in stored.targets:
        try:
            packed = sparse_layout.from_named_tensors(name, state, stored.format)
        except KeyError as missing:
            raise ModelLoadError(f"{folder}: {stored.format} tensor {missing} of {name} is missing") from None
        state[f"{name}.weight"] = sparse_layout.unpack(packed)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if name not in _tied_names(model)]
    if missing or unexpected:
        raise ModelLoadError(f"{folder}: the export does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    return model


def _tied_names(model: nn.Module) -> set[str]:
    """Names of tensors that share storage with an earlier one (tied LM head)."""
    seen: dict = {}
    tied = set()
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr(), tensor.shape
        if key in seen:
            tied.add(name)
        seen[key] = name
    return tied
