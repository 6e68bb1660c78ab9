"""Turn a compact export into the layout that compressed-tensors 0.13 (and vLLM <= 0.18.1 with it) reads.

compressed-tensors 0.13.0 is the last release with the sparse compressors that installs beside
transformers 5 (they were removed in 0.15.0, PR #610); vLLM read its ``sparse-24-bitmask`` (2:4)
through the ``CompressedTensors24`` scheme up to 0.18.1, which pins compressed-tensors 0.13.0 and
transformers < 5, and never read ``sparse-bitmask`` (llm-compressor issue #1241). An
``export=compressed`` folder already holds 0.13's tensors under 0.13's names; this module writes them
as ``model.safetensors`` beside a ``config.json`` with the model's own ``model_type`` and the
``quantization_config`` that 0.13's ``ModelCompressor.update_config`` writes. Such a folder is read
silently wrong by current compressed-tensors (its pruned weights freshly initialised), so give it
only to that older stack; ``sparsebench.export.load_export`` reads it too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from sparsebench.errors import ModelLoadError
from sparsebench.export import DENSE, HF_WEIGHTS_FILE, SECTION, WEIGHTS_FILE, read_export
from sparsebench.files import share_folder

log = logging.getLogger(__name__)

VERSION = "0.13.0"
STRUCTURES = {"sparse-bitmask": "unstructured", "sparse-24-bitmask": "2:4"}


def quantization_config(fmt: str, targets: list[str], global_sparsity: float) -> dict:
    """The ``quantization_config`` that compressed-tensors 0.13 writes for a sparse model (no quantization)."""
    return {
        "quant_method": "compressed-tensors",
        "sparsity_config": {
            "format": fmt, "global_sparsity": global_sparsity, "ignore": None, "registry_requires_subclass": False,
            "sparsity_structure": STRUCTURES[fmt], "targets": targets,
        },
        "transform_config": {},
        "version": VERSION,
    }


def to_compressed_tensors_013(folder: str | Path, out: str | Path) -> Path:
    """Write ``folder`` (an ``export=compressed`` folder) to ``out`` (which must not exist) in compressed-tensors 0.13's layout."""
    folder, out = Path(folder), Path(out)
    stored = read_export(folder)
    if stored.format == DENSE or stored.weights.name != WEIGHTS_FILE:
        raise ModelLoadError(f"{folder}: not an export=compressed folder (format {stored.format}); an export=hf folder loads with transformers as it is")
    if stored.ranks:
        raise ModelLoadError(f"{folder}: its low-rank factors (sparse plus low-rank) have no compressed-tensors layout")
    if out.exists():
        raise FileExistsError(f"{out} exists; give a new folder")
    global_sparsity = json.loads((folder / "config.json").read_text())[SECTION].get("global_sparsity", 0.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        for path in folder.iterdir():
            if path.is_file() and path.name not in ("config.json", WEIGHTS_FILE):
                shutil.copy2(path, partial / path.name)
        shutil.copy2(stored.weights, partial / HF_WEIGHTS_FILE)
        config = {**stored.config, "quantization_config": quantization_config(stored.format, list(stored.targets), global_sparsity)}
        (partial / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        share_folder(partial)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.warning(
        "%s is in compressed-tensors %s's layout: only that release (and vLLM <= 0.18.1 for 2:4) reads it right; current "
        "compressed-tensors with transformers 5 loads it without an error but with its pruned weights freshly initialised", out, VERSION,
    )
    return out
