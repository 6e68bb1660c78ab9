"""Measured per-case times of whole cases through the ``sparsebench`` command, on a GPU.

    python benchmarks/bench_grid_cases.py --tokenizer DIR --data DIR --out DIR [--cases wanda:uniform ...]

Builds a model with LLaMA-2-7B's shapes and random fp16 weights (honest for timing, never for
quality), saves it as a Hugging Face folder with a real tokenizer (e.g. SmolLM2's, from the
converted cache), then runs each case as a user would: ``sparsebench model.path=... metric=M
allocator=A ...`` with the papers' protocol (128 x 2048 calibration tokens, perplexity on the whole
WikiText-2 and PTB test sets at 2048 tokens). Each case is its own process, so its time includes
loading the model. It prints every case's per-phase timings and copies the result documents to
``--out``, where ``benchmarks/estimate_grid.py`` turns them into a grid's GPU-hours.

C4 is not available offline; its 256 x 2048-token evaluation is estimated by ``estimate_grid.py``
from the measured time per WikiText-2 segment.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import torch


def build_model_folder(folder: Path, tokenizer_dir: Path, layers: int) -> None:
    """LLaMA-2-7B shapes, the tokenizer's vocabulary, random fp16 weights; saved with the tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=4096, torch_dtype="float16",
    )
    torch.set_default_dtype(torch.float16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    generator = torch.Generator(device="cuda").manual_seed(0)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.02, generator=generator) if parameter.dim() > 1 else parameter.data.fill_(1.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()


def run_case(args, model_dir: Path, metric: str, allocator: str, extra: list[str]) -> dict:
    overrides = [
        f"model.path={model_dir}", f"metric={metric}", f"allocator={allocator}", f"sparsity.ratio={args.sparsity}",
        f"data.wikitext2={args.data / 'wikitext2-tok'}", f"data.ptb={args.data / 'ptb'}", "eval.ppl.datasets=[wikitext2,ptb]",
        "eval.ppl.seqlen=2048", "calibration.dataset=wikitext2", "calibration.split=validation",
        f"calibration.nsamples={args.nsamples}", "calibration.seqlen=2048", "device=cuda", "progress=false",
        f"results_dir={args.work / 'results'}", f"cache_dir={args.work / 'cache'}", *extra,
    ]
    started = time.perf_counter()
    completed = subprocess.run(["sparsebench", *overrides], capture_output=True, text=True)
    wall = time.perf_counter() - started
    documents = sorted((args.work / "results").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not documents:
        print(completed.stdout[-3000:], completed.stderr[-3000:])
        raise SystemExit(f"{metric}:{allocator}: no result document")
    document = json.loads(documents[-1].read_text())
    document["benchmark"] = {"wall_s": wall, "returncode": completed.returncode, "label": f"{metric}:{allocator}"}
    if document["status"] != "ok":
        print(completed.stderr[-3000:])
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True, help="a folder with tokenizer.json (e.g. SmolLM2's)")
    parser.add_argument("--data", type=Path, required=True, help="a folder with wikitext2-tok/ and ptb/ (valid.txt, test.txt)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_grid_cases"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", default=["none:uniform", "magnitude:uniform", "wanda:uniform", "sparsegpt:uniform"],
                        help="metric:allocator[:override,override...]")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--layers", type=int, default=32)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.work / "model"
    if not (model_dir / "config.json").exists():
        started = time.perf_counter()
        build_model_folder(model_dir, args.tokenizer, args.layers)
        print(f"built and saved a LLaMA-2-7B-shaped model ({args.layers} blocks) in {time.perf_counter() - started:.1f} s")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; sparsity {args.sparsity}, calibration {args.nsamples} x 2048")
    for case in args.cases:
        metric, allocator, *rest = case.split(":")
        extra = rest[0].split(",") if rest else []
        shutil.rmtree(args.work / "results", ignore_errors=True)
        document = run_case(args, model_dir, metric, allocator, extra)
        timings = {key: round(value, 1) for key, value in document["timings"].items()}
        ppl = {name: round(result["segments"], 0) for name, result in document.get("metrics", {}).get("ppl", {}).items()}
        peak = document.get("memory", {}).get("peak_gpu_allocated_bytes")
        print(f"{case:<28} {document['status']:<6} wall {document['benchmark']['wall_s']:6.1f} s  segments {ppl}  "
              f"peak GPU {peak / 2**30 if peak else float('nan'):.1f} GiB\n    {json.dumps(timings)}")
        name = case.replace(":", "_").replace(",", "_").replace("=", "-")
        (args.out / f"{name}.json").write_text(json.dumps(document, indent=1, default=str))


if __name__ == "__main__":
    main()
