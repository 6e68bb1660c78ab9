"""Load a causal LM and its tokenizer from a hub id, a local folder or a ``.gguf`` file.

A folder written by ``export=hf|compressed`` loads like any other: one that only
``sparsebench.export.load_export`` reads right (the compact layout, sparse-plus-low-rank factors;
``export.needs_load_export``) goes through it, the rest through ``from_pretrained``.

GGUF files are de-quantised by transformers (``gguf_file=``), which takes tens of seconds; the
de-quantised model is kept in the user cache, keyed by the file's sha256, so later runs load it
in about a second. The cached copy holds exactly the tensors transformers produced.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sparsebench import export
from sparsebench.errors import ModelLoadError
from sparsebench.models.adapters import FamilyAdapter, adapter_for
from sparsebench.models.sources import ModelSource, check_gguf_magic, resolve_source, sha256_of

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    adapter: FamilyAdapter
    source: ModelSource
    dtype: torch.dtype

    @property
    def context_length(self) -> int | None:
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, key, None)
            if value:
                return int(value)
        return None

    def facts(self) -> dict:
        blocks = self.adapter.get_blocks(self.model)
        prunable = sum(
            linear.weight.numel() for block in blocks for linear in self.adapter.get_linears(block).values()
        )
        return {
            "family": self.adapter.name,
            "model_type": getattr(self.model.config, "model_type", None),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "prunable_parameters": prunable,
            "num_blocks": len(blocks),
            "dtype": str(self.dtype).removeprefix("torch."),
            "context_length": self.context_length,
        }


def resolve_dtype(name: str, device: str, config_dtype: torch.dtype | None, half_dtype: str = "float16") -> torch.dtype:
    """``auto``: float32 on the CPU; on a GPU the checkpoint's own half type, or for a float32
    checkpoint the family's ``half_dtype`` (float16, the papers' choice; bfloat16 for Gemma)."""
    if name != "auto":
        return DTYPES[name]
    if device == "cpu":
        return torch.float32
    if config_dtype in (torch.float16, torch.bfloat16):
        return config_dtype
    return DTYPES[half_dtype]


_PROBE = "The quick brown fox jumps over the lazy dog."


def check_converted_tokenizer(tokenizer, path: str, folder: Path) -> None:
    """A tokenizer converted from a GGUF file must keep common English words whole.

    transformers 5.17 converts Gemma 3's GGUF tokenizer into one that cuts words into pieces
    ('▁T', 'he', '▁qu', 'ick': 21 tokens for the probe sentence instead of 10, and no BOS), which
    makes every perplexity meaningless without any error; 5.24 converts it right. Any real
    tokenizer with a vocabulary of 30 k or more keeps the probe's ten words and stop whole.
    """
    import transformers

    pieces = tokenizer.tokenize(_PROBE)
    if len(pieces) > 15:
        raise ModelLoadError(
            f"model.path={path!r}: the tokenizer converted from the GGUF file cuts common words into pieces "
            f"({len(pieces)} tokens for {_PROBE!r}: {pieces[:8]} ...); transformers {transformers.__version__} mis-converts "
            f"this GGUF tokenizer (seen with 5.17 and Gemma 3; 5.24 converts it right): upgrade transformers and delete "
            f"{folder} so that the model is converted again"
        )


def _converted_gguf(source: ModelSource, cache_dir: Path) -> ModelSource:
    """A cached, de-quantised copy of a GGUF model as a plain Hugging Face folder."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = source.gguf_path
    check_gguf_magic(gguf_path)
    folder = cache_dir / "converted" / sha256_of(gguf_path)[:24]
    if (folder / "model.safetensors").exists():
        return ModelSource(str(folder), None, is_local=True)
    log.info("de-quantising %s (once; cached in %s)", gguf_path, folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(source.location, gguf_file=source.gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    except Exception as error:  # transformers raises many types for a bad file
        raise ModelLoadError(f"model.path={str(gguf_path)!r}: could not read the GGUF file: {error}") from error
    check_converted_tokenizer(tokenizer, str(gguf_path), folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".partial-"))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (partial / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(partial)
        save_model(model, str(partial / "model.safetensors"))
        _publish_converted(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return ModelSource(str(folder), None, is_local=True)


def _publish_converted(partial: Path, folder: Path) -> None:
    """Move a finished conversion into place; a copy another process published first is kept.

    Cases of a grid that start together on a fresh cache each convert the model; the first to finish
    publishes it and the others, whose rename finds the folder taken, use that copy (same file, same
    transformers) instead of failing their case.
    """
    try:
        os.replace(partial, folder)
    except OSError:
        if not (folder / "model.safetensors").exists():
            raise
        log.info("%s was converted meanwhile by another process; using that copy", folder)


def load_config(path: str, cache_dir: Path, revision: str | None = None, trust_remote_code: bool = False):
    """Resolve the source and read only the model's config (cheap; used to validate before loading)."""
    from transformers import AutoConfig

    source = resolve_source(path, cache_dir)
    if source.gguf_file:
        source = _converted_gguf(source, cache_dir)
    if source.is_local and export.needs_load_export(source.location):
        return source, export.export_config(export.read_export(source.location))
    try:
        config = AutoConfig.from_pretrained(source.location, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as error:
        raise ModelLoadError(f"model.path={path!r}: could not read the model config: {error}") from error
    return source, config


def load_model(
    path: str,
    cache_dir: Path,
    family: str = "auto",
    dtype: str = "auto",
    device: str = "cpu",
    offload: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load model and tokenizer; the model goes to ``device`` unless ``offload`` keeps it on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, config = load_config(path, cache_dir, revision, trust_remote_code)
    adapter = adapter_for(family, getattr(config, "model_type", None))
    torch_dtype = resolve_dtype(dtype, device, getattr(config, "dtype", None), adapter.half_dtype)
    target_device = "cpu" if offload else device
    from_export = source.is_local and export.needs_load_export(source.location)
    try:
        if from_export:
            model = export.load_export(source.location, torch_dtype).to(target_device)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                source.location,
                revision=revision,
                dtype=torch_dtype,
                device_map=target_device,
                trust_remote_code=trust_remote_code,
            )
        tokenizer_config = {"config": config} if from_export else {}  # not the marker of the folder's config.json
        tokenizer = AutoTokenizer.from_pretrained(source.location, revision=revision, trust_remote_code=trust_remote_code, **tokenizer_config)
    except Exception as error:
        raise ModelLoadError(f"model.path={path!r}: could not load the model: {error}") from error
    if Path(source.location).parent == cache_dir / "converted":  # converted from GGUF, perhaps by another transformers
        check_converted_tokenizer(tokenizer, path, Path(source.location))
    model.eval()
    model.config.use_cache = False
    return LoadedModel(model, tokenizer, adapter, source, torch_dtype)
