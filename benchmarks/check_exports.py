"""Does each export load right, with plain transformers and with the project's loader, in a fresh process?

    python benchmarks/check_exports.py                       # a tiny random LLaMA (seconds)
    python benchmarks/check_exports.py --model PATH          # any model.path the project loads, e.g. SmolLM2's preset path
    python benchmarks/check_exports.py --python OTHER_PYTHON # the fresh processes run another interpreter (another stack)

For each export (``hf``; ``compressed`` 2:4 and unstructured; HASSLE-free sparse plus low-rank, ``hf`` and
``compressed``) it prunes the model by magnitude (2:4, or 50 % unstructured; HASSLE-free: 2:4 with random
rank-4 factors: the format is under test, not the quality), writes the export with ``export_model`` at
float32, computes the logits of fixed token ids, then loads the folder in a fresh process twice:

- ``plain``: ``AutoModelForCausalLM.from_pretrained(folder)``, as a new user would;
- ``sparsebench``: ``sparsebench.models.loading.load_model(folder)``, what ``sparsebench model.path=folder`` runs.

Each load prints ``exact`` (every logit equal, bit for bit), ``refused`` (the error's first line) or
``WRONG`` (loaded, but the logits differ: the largest difference). Exits 1 if any load is WRONG.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

EXPORTS = {  # name: (export format, pattern, sparse plus low-rank)
    "hf 2:4": ("hf", "2:4", False),
    "compressed 2:4 (sparse-24-bitmask)": ("compressed", "2:4", False),
    "compressed unstructured 50% (sparse-bitmask)": ("compressed", None, False),
    "HASSLE-free 2:4 + rank 4, hf": ("hf", "2:4", True),
    "HASSLE-free 2:4 + rank 4, compressed": ("compressed", "2:4", True),
}
LOADERS = ("plain", "sparsebench")


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval(), _word_tokenizer(config.vocab_size)


def _word_tokenizer(vocab_size: int):
    """A word-level tokenizer of ``vocab_size`` made-up words (the project's loader loads a tokenizer too)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {"<unk>": 0, **{f"w{index}": index for index in range(1, vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def _load(path: str, cache_dir: Path):
    from sparsebench.models.loading import load_model

    loaded = load_model(path, cache_dir, dtype="float32")
    return loaded.model, loaded.tokenizer


def _prune(model, pattern, low_rank: bool) -> list[str]:
    """Magnitude-prune every prunable linear (optionally make it S + B A with random factors); their full names."""
    from sparsebench.lowrank import Decomposition, install_decomposition
    from sparsebench.masks import NMPattern, SparsityTarget, select_mask
    from sparsebench.models.adapters import adapter_for

    adapter = adapter_for("auto", model.config.model_type)
    nm = NMPattern(2, 4) if pattern else None
    generator = torch.Generator().manual_seed(1)
    names = []
    for index, block in enumerate(adapter.get_blocks(model)):
        for name, linear in adapter.get_linears(block).items():
            full = f"{adapter.blocks}.{index}.{name}"
            weight = linear.weight.data
            weight.masked_fill_(select_mask(weight.abs(), SparsityTarget(0.5, nm)), 0.0)
            if low_rank:
                rows, cols = weight.shape
                factors = torch.randn(4, cols, generator=generator) * 0.01, torch.randn(rows, 4, generator=generator) * 0.01
                install_decomposition(model, full, Decomposition(weight.clone(), *factors))
            names.append(full)
    return names


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(0))


def load_in_this_process(loader: str, folder: str, out: str, cache_dir: str) -> None:
    """The child: load ``folder`` with ``loader``, save its logits (or the error) to ``out``."""
    try:
        if loader == "plain":
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        else:
            model = _load(folder, Path(cache_dir))[0]
        with torch.no_grad():
            torch.save({"logits": model(_ids(model.config.vocab_size)).logits}, out)
    except Exception as error:  # the outcome under test
        torch.save({"error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}, out)


def _outcome(python: str, loader: str, folder: Path, expected: torch.Tensor, cache_dir: Path) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "outcome.pt"
        run = subprocess.run([python, __file__, "--child", loader, str(folder), str(out), str(cache_dir)], capture_output=True, text=True)
        if run.returncode or not out.exists():
            return f"refused (the process failed: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode})"
        result = torch.load(out)
    if "error" in result:
        return f"refused: {result['error']}"
    logits = result["logits"]
    if logits.shape == expected.shape and torch.equal(logits, expected):
        return "exact"
    difference = (logits - expected).abs().max().item() if logits.shape == expected.shape else float("nan")
    return f"WRONG: loaded with logits off by up to {difference:.4g}"


def _versions(python: str) -> str:
    code = ("from importlib.metadata import version, PackageNotFoundError\n"
            "def v(n):\n try: return version(n)\n except PackageNotFoundError: return 'absent'\n"
            "print(', '.join(f'{n} {v(n)}' for n in ('torch', 'transformers', 'safetensors', 'compressed-tensors')))")
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model.path the project loads (default: a tiny random LLaMA)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the fresh processes")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "sparsebench"))
    parser.add_argument("--child", nargs=4, metavar=("LOADER", "FOLDER", "OUT", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        load_in_this_process(*args.child)
        return 0
    from sparsebench.export import ExportSpec, export_model
    from sparsebench.masks import NMPattern

    cache_dir = Path(args.cache_dir)
    print(f"model: {args.model or 'a tiny random LLaMA (2 blocks, hidden 64)'}")
    print(f"fresh processes: {Path(args.python).name} ({_versions(args.python)})")
    wrong = 0
    with tempfile.TemporaryDirectory() as scratch:
        for name, (fmt, pattern, low_rank) in EXPORTS.items():
            model, tokenizer = _load(args.model, cache_dir) if args.model else _tiny_llama()
            dense_parameters = sum(p.numel() for p in model.parameters())
            pruned = _prune(model, pattern, low_rank)
            spec = ExportSpec(fmt, "float32", Path(scratch) / name.replace(" ", "_").replace("%", "").replace(",", ""))
            section = export_model(model, tokenizer, spec, "case", pruned, NMPattern(2, 4) if pattern else None, dense_parameters)
            with torch.no_grad():
                expected = model(_ids(model.config.vocab_size)).logits
            files = sorted(path.name for path in Path(section["path"]).iterdir())
            print(f"\n{name}: {', '.join(files)}")
            for loader in LOADERS:
                outcome = _outcome(args.python, loader, Path(section["path"]), expected, cache_dir)
                wrong += outcome.startswith("WRONG")
                print(f"  {loader:<11} {outcome}")
    print(f"\n{wrong} wrong load(s)")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
