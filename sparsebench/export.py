"""Export of a pruned model: a Hugging Face folder, or the compressed-tensors format.

``export=hf`` writes a plain Hugging Face folder (``model.safetensors``, ``config.json``, the
tokenizer) that ``AutoModelForCausalLM.from_pretrained`` loads; pruned weights are stored dense
(zeros included), so it is the size of the dense checkpoint.

``export=compressed`` writes the format that llm-compressor writes and vLLM reads, through the
``compressed-tensors`` package (pinned 0.13.0: the newest release that still has the sparse
compressors and installs beside transformers 5): ``sparse-bitmask`` (non-zero values, a packed
bitmask and row offsets) for unstructured sparsity and ``sparse-24-bitmask`` (the kept half of
every group of four and a packed bitmask) for 2:4. The sparsity config sits in ``config.json``
under ``quantization_config``; the compressed linears are listed by name in its ``targets``.
transformers 5 itself refuses to read these formats (it wants compressed-tensors >= 0.15, which
dropped them), so the folder loads back with ``load_export`` (a model built from its config,
then ``ModelCompressor.decompress``), as llm-compressor does.

Sparse plus low-rank models (``metric=hassle_free``) keep the sparse part S as each linear's
``weight`` (compressed like any pruned weight) and store the dense factors A and B under
``<linear>.low_rank_down.weight`` and ``<linear>.low_rank_up.weight`` in the same safetensors
file; ``sparsebench_low_rank.json`` lists ``{linear: rank}``. ``load_export`` rebuilds the
``SparsePlusLowRankLinear`` modules from it, so the loaded model is the same model. A plain
``from_pretrained`` of such a folder loads S alone (it drops the factors as unexpected keys).
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

from sparsebench.errors import ConfigError
from sparsebench.files import current_umask
from sparsebench.lowrank import attach_low_rank, low_rank_ranks
from sparsebench.masks import NMPattern

log = logging.getLogger(__name__)

FORMATS = ("none", "hf", "compressed")
EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LOW_RANK_FILE = "sparsebench_low_rank.json"
COMPRESSED_TENSORS_VERSION = "0.13.0"
BITMASK = "sparse-bitmask"
BITMASK_24 = "sparse-24-bitmask"


@dataclass(frozen=True)
class ExportSpec:
    format: str  # hf | compressed
    dtype: str | None  # None: the dtype the case ran in
    directory: Path  # <results_dir>/models unless export.dir is set


def compressed_format(pattern: NMPattern | None) -> str:
    """The compressed-tensors sparsity format of a pattern (raises ``ConfigError`` if none fits)."""
    if pattern is None:
        return BITMASK
    if (pattern.n, pattern.m) == (2, 4):
        return BITMASK_24
    raise ConfigError(
        f"export=compressed: compressed-tensors stores unstructured sparsity ({BITMASK}) and 2:4 ({BITMASK_24}), "
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
        _require_compressed_tensors()
    directory = Path(config["dir"]).expanduser() if config.get("dir") else Path(results_dir) / "models"
    return ExportSpec(fmt, dtype, directory)


def _require_compressed_tensors() -> None:
    try:
        from importlib.metadata import PackageNotFoundError, version

        found = version("compressed-tensors")
    except PackageNotFoundError:
        raise ConfigError(f'export=compressed needs compressed-tensors=={COMPRESSED_TENSORS_VERSION}: pip install -e ".[export]"') from None
    if found != COMPRESSED_TENSORS_VERSION:
        raise ConfigError(
            f"export=compressed needs compressed-tensors=={COMPRESSED_TENSORS_VERSION} (found {found}; releases from 0.15 "
            f'dropped the sparse formats): pip install -e ".[export]"'
        )


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
    folder.chmod(0o777 & ~current_umask())
    try:
        section = _write_export(model, tokenizer, spec, folder, final, pruned_linears, pattern, dense_parameters, started)
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
    if spec.format == "compressed":
        from compressed_tensors.compressors import ModelCompressor
        from compressed_tensors.config import SparsityCompressionConfig

        fmt = compressed_format(pattern)
        zeros = sum(int((state[f"{name}.weight"] == 0).sum()) for name in pruned_linears)
        total = sum(state[f"{name}.weight"].numel() for name in pruned_linears)
        config = SparsityCompressionConfig.load_from_registry(fmt, targets=list(pruned_linears), global_sparsity=zeros / max(total, 1))
        compressor = ModelCompressor(sparsity_config=config)
        state = compressor.compress(model, state_dict=state)
        section["compression"] = {"package": "compressed-tensors", "version": COMPRESSED_TENSORS_VERSION, "sparsity_format": fmt, "compressed_linears": len(pruned_linears)}
    _write_folder(model, state, dtype, folder)
    if spec.format == "compressed":
        compressor.update_config(str(folder))
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
            "loads_with": "AutoModelForCausalLM.from_pretrained" if spec.format == "hf" and not ranks else "sparsebench.export.load_export",
        }
    )
    log.info("exported %s (%s, %.1f MB of weights, %.3f of dense)", final, spec.format, weight_bytes / 1e6, section["weight_bytes_vs_dense"])
    return section


def _write_folder(model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype, folder: Path) -> None:
    """``config.json`` (at the export dtype), ``generation_config.json`` and one ``model.safetensors``
    holding the tensors under the model's own names (``save_pretrained`` would rename some, e.g.
    GPT-NeoX's head, which the compressor's loader could then not find)."""
    from safetensors.torch import save_file

    original_dtype = model.config.dtype
    model.config.dtype = dtype
    try:
        model.config.save_pretrained(folder)
    finally:
        model.config.dtype = original_dtype
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def load_export(folder: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """Load a folder written by ``export_model`` (either format) back into the same model, on the CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    compression = getattr(config, "quantization_config", None)
    ranks_file = folder / LOW_RANK_FILE
    ranks = json.loads(ranks_file.read_text()) if ranks_file.exists() else {}
    if compression is None and not ranks:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or config.dtype).eval()
    if compression is not None:
        del config.quantization_config  # transformers 5 reads these sparse formats no more: the compressor does
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or config.dtype).eval()
    attach_low_rank(model, ranks)
    if compression is not None:
        from compressed_tensors.compressors import ModelCompressor

        ModelCompressor.from_compression_config(compression).decompress(str(folder), model)
    else:
        from safetensors.torch import load_file

        state = {}
        for path in sorted(folder.glob("*.safetensors")):
            state.update(load_file(path))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [name for name in missing if name not in _tied_names(model)]
        if missing or unexpected:
            raise ValueError(f"{folder}: the export does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
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
