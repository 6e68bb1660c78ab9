"""Scoring lm-eval's log-likelihood requests in large token batches, with lm-eval's numbers.

lm-eval's ``HFLM._loglikelihood_tokens`` pads a fixed number of requests per forward and then
works through them one at a time in Python: per request it slices the logits, takes an argmax,
copies the continuation to the device, gathers and reads back two scalars (several device
round-trips per request). :func:`score_requests` keeps everything that defines the numbers, and
changes only how the forwards are grouped and read:

- the requests, their order and lm-eval's sharing of one forward between requests whose inputs
  are equal (its ``Collator`` grouped by context + continuation[:-1], the "one-token continuation
  cache") are lm-eval's own objects and calls;
- each request's input is lm-eval's (``(context + continuation)[-(max_length + 1):][:-1]``, right
  padded, no attention mask: causal attention never looks at the padding), and the forward is the
  wrapper's own ``_model_call``;
- the score is lm-eval's arithmetic: ``log_softmax`` in lm-eval's ``softmax_dtype`` (the logits'
  dtype by default) over the continuation positions, the continuation tokens' values summed and
  rounded to that dtype, greedy = every position's argmax is the continuation token; a request
  that shares another's forward reads lm-eval's slices of it (the gather over the first, the
  argmax over the last positions of the shared continuation window).

What changes: a batch is as many requests (sorted longest first, as lm-eval sorts them) as fit a
budget of padded tokens, ``log_softmax`` runs only on the continuation positions (not on every
position of the batch), and a batch's scores are reduced on the device and read back once.
Scores equal lm-eval's up to float rounding (the forward's shapes differ; the sum of a request's
token values is accumulated in float64 rather than float32 before the same rounding).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from tqdm import tqdm

log = logging.getLogger(__name__)


def encode_all(lm, pairs: list[tuple[str, str]]) -> dict:
    """``{(string, add_special_tokens): tokens}`` for every string lm-eval's ``loglikelihood`` will
    encode for these (context, continuation) pairs, each distinct string once, in one batched call
    of the fast tokenizer per set of keyword arguments (lm-eval encodes one string at a time, each
    context once per choice). The keyword arguments are the ones ``HFLM.tok_encode`` passes."""
    from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix

    wanted = set()
    for context, continuation in pairs:
        if context == "":
            wanted.add((continuation, False))
            continue
        spaces = len(context) - len(context.rstrip())  # lm-eval's _encode_pair moves them to the continuation
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        wanted.update(((context + continuation, None), (context, None)))
    bos = lm.tokenizer.decode(lm.prefix_token_id)
    by_kwargs: dict[tuple, list] = {}
    for string, add_special_tokens in wanted:
        kwargs = _add_special_kwargs(add_special_tokens, lm.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, bos):
            kwargs["add_special_tokens"] = False
        by_kwargs.setdefault(tuple(sorted(kwargs.items())), []).append((string, add_special_tokens))
    encoded = {}
    for kwargs, keys in by_kwargs.items():
        ids = lm.tokenizer([string for string, _ in keys], **dict(kwargs))["input_ids"]
        encoded.update(zip(keys, ids))
    return encoded


def _longest_first(request) -> tuple:
    """lm-eval's sort key: longest context + continuation first, then the tokens."""
    tokens = request[1] + request[2]
    return -len(tokens), tuple(tokens)


def _shared_input(request) -> list[int]:
    """lm-eval's grouping key: requests with equal context + continuation[:-1] share one forward."""
    return request[-2] + request[-1][:-1]


def token_batches(widths: list[int], batch_tokens: int) -> list[tuple[int, int]]:
    """Slices ``[start, stop)`` of requests sorted longest first: each batch is padded to its first
    request's width and holds as many requests as fit ``batch_tokens`` padded tokens (at least one)."""
    batches, start = [], 0
    while start < len(widths):
        rows = max(1, batch_tokens // widths[start])
        stop = min(len(widths), start + rows)
        batches.append((start, stop))
        start = stop
    return batches


def _batch_scores(lm, inputs: list[list[int]], segments: list[tuple[int, int, int, list[int]]]) -> tuple[list[float], list[bool]]:
    """One forward over right-padded ``inputs``; per segment (row, first log-likelihood position,
    first greedy position, continuation tokens) lm-eval's (sum of log-probabilities, greedy)."""
    width = len(inputs[0])
    padded = torch.tensor([row + [0] * (width - len(row)) for row in inputs], dtype=torch.long)
    rows, ll_positions, greedy_positions, targets, segment_ids = [], [], [], [], []
    for index, (row, ll_start, greedy_start, continuation) in enumerate(segments):
        count = len(continuation)
        rows += [row] * count
        ll_positions += range(ll_start, ll_start + count)
        greedy_positions += range(greedy_start, greedy_start + count)
        targets += continuation
        segment_ids += [index] * count
    device = lm.device
    pin = device.type == "cuda"
    to_device = lambda values: (torch.tensor(values, dtype=torch.long).pin_memory() if pin else torch.tensor(values, dtype=torch.long)).to(device, non_blocking=True)
    rows_t, ll_t, targets_t, segments_t = to_device(rows), to_device(ll_positions), to_device(targets), to_device(segment_ids)
    logits = lm._model_call((padded.pin_memory() if pin else padded).to(device, non_blocking=True))  # [batch, width, vocab]
    log_probs = F.log_softmax(logits[rows_t, ll_t], dim=-1, dtype=lm.softmax_dtype)  # continuation positions only
    token_values = log_probs.gather(1, targets_t[:, None]).squeeze(1)
    if greedy_positions == ll_positions:
        greedy_log_probs = log_probs
    else:  # a request sharing a longer continuation's forward: lm-eval's argmax looks at the last positions
        greedy_log_probs = F.log_softmax(logits[rows_t, to_device(greedy_positions)], dim=-1, dtype=lm.softmax_dtype)
    misses = (greedy_log_probs.argmax(dim=-1) != targets_t).to(torch.int32)
    count = len(segments)
    sums = torch.zeros(count, dtype=torch.float64, device=device).index_add_(0, segments_t, token_values.double())
    sums = sums.to(token_values.dtype).double()  # lm-eval's sum is a tensor of the log-probabilities' dtype
    missed = torch.zeros(count, dtype=torch.int32, device=device).index_add_(0, segments_t, misses)
    scores = torch.stack([sums, missed.double()]).cpu()  # one read-back per batch
    return scores[0].tolist(), [m == 0 for m in scores[1].tolist()]


def score_requests(lm, requests: list, batch_tokens: int, disable_tqdm: bool = False, counts: dict | None = None) -> list[tuple[float, bool]]:
    """lm-eval's ``_loglikelihood_tokens`` results for ``requests`` ((strings, context tokens,
    continuation tokens) triples) of a causal model, in batches of at most ``batch_tokens`` padded
    tokens. ``counts``, if given, gets ``forwards``, ``rows`` (inputs run), ``tokens`` (the inputs' own) and ``padded_tokens`` added."""
    from lm_eval.models.utils import Collator

    collator = Collator(requests, sort_fn=_longest_first, group_by="contexts" if lm.logits_cache else None, group_fn=_shared_input)
    ordered = [request for batch in collator.get_batched(n=0) for request in batch]  # lm-eval's order, one per shared forward
    inputs = []
    for _, context, continuation in ordered:
        if not context or not continuation or len(continuation) > lm.max_length:
            raise ValueError("a log-likelihood request needs a context and a continuation no longer than the model's context length")
        if len(context) + len(continuation) > lm.max_length + 1:
            log.warning("a request of %d tokens exceeds the model's %d: truncated from the left, as lm-eval does", len(context) + len(continuation), lm.max_length)
        inputs.append((context + continuation)[-(lm.max_length + 1):][:-1])
    placeholder = torch.empty(1, 1, 1)  # get_cache only expands it: the scores are computed per batch
    results = []
    progress = tqdm(total=len(requests), disable=disable_tqdm or lm.rank != 0, desc="Scoring log-likelihood requests")
    batches = token_batches([len(i) for i in inputs], batch_tokens)
    if counts is not None:
        for key, value in (("forwards", len(batches)), ("rows", len(inputs)), ("tokens", sum(map(len, inputs))),
                           ("padded_tokens", sum((stop - start) * len(inputs[start]) for start, stop in batches))):
            counts[key] = counts.get(key, 0) + value
    for start, stop in batches:
        segments, strings = [], []
        for row, (strings_of_row, context, continuation) in enumerate(ordered[start:stop]):
            length, window = len(inputs[start + row]), len(continuation)
            # every request sharing this forward (just this one unless its input is another's), in lm-eval's order
            for request_strings, shared_continuation, _ in collator.get_cache(req_str=strings_of_row, cxt_toks=context, cont_toks=continuation, logits=placeholder):
                count = len(shared_continuation)
                segments.append((row, length - window, length - count, list(shared_continuation)))
                strings.append(request_strings)
        sums, greedy = _batch_scores(lm, inputs[start:stop], segments)
        for request_strings, answer in zip(strings, zip(sums, greedy)):
            results.append(answer)
            if request_strings is not None:
                lm.cache_hook.add_partial("loglikelihood", request_strings, answer)
        progress.update(len(segments))
    progress.close()
    return collator.get_original(results)
