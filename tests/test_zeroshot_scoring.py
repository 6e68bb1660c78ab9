"""scoring=token_batches against lm-eval's own HFLM loop: the same (log-likelihood, greedy) per request."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
from zeroshot_examples import write_task_copies

from sparsebench.evaluate.zeroshot_scoring import token_batches

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval is not installed (pip install 'sparsebench[zeroshot]')")


def test_token_batches_fill_the_budget_and_cover_every_request():
    widths = [40, 39, 39, 30, 12, 12, 5, 5, 5, 1]
    batches = token_batches(widths, 80)
    assert batches == [(0, 2), (2, 4), (4, 10)]  # 2 x 40, 2 x 39, 6 x 12 padded tokens
    assert token_batches([300, 2], 80) == [(0, 1), (1, 2)]  # a request wider than the budget runs alone
    assert token_batches([], 80) == []


@pytest.fixture(scope="module")
def requests_and_models(tmp_path_factory, wikitext_lines):
    """Every request of three tasks, one request longer than the model's context, one-token
    continuations of one context (lm-eval's grouping gives them one forward), a tiny model, a
    tokenizer and HFLM's own results at batch size 1."""
    from lm_eval.models.huggingface import HFLM
    from sparsebench.testing.tiny_models import tiny_model, train_tiny_tokenizer

    from sparsebench.evaluate.zeroshot import load_tasks, validate_zeroshot

    copies = write_task_copies(tmp_path_factory.mktemp("zeroshot-data"))
    names = ("boolq", "hellaswag", "piqa")
    spec = validate_zeroshot({"tasks": list(names)}, {name: str(copies[name]) for name in names})
    requests = []
    for loaded in load_tasks(spec).values():
        loaded.lm_eval_task.build_all_requests(rank=0, world_size=1)
        requests += [instance for instance in loaded.lm_eval_task.instances]
    # one request longer than the tiny model's 256 positions: truncated from the left by both paths
    model, tokenizer = tiny_model("llama"), train_tiny_tokenizer(wikitext_lines)
    long = dataclasses.replace(requests[0], arguments=(" ".join(wikitext_lines[1:40]), " the end"))
    requests.append(long)
    # one-token continuations of one context: lm-eval scores them from one shared forward
    context = "The history of the city"
    single = [word for word in (" the", " of", " and", " in", " to", ",", ".", " a") if len(tokenizer(context + word)["input_ids"]) == len(tokenizer(context)["input_ids"]) + 1]
    assert len(single) >= 2
    requests += [dataclasses.replace(requests[0], arguments=(context, word)) for word in single]
    assert len(tokenizer(long.args[0])["input_ids"]) > model.config.max_position_embeddings
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1).loglikelihood(requests, disable_tqdm=True)
    return spec, requests, model, tokenizer, reference


@needs_lm_eval
@pytest.mark.parametrize("batch_tokens", [1, 64, 100_000])  # one request per forward, a few per forward, all at once
def test_token_batches_give_hflms_scores_per_request(requests_and_models, batch_tokens):
    from sparsebench.evaluate.zeroshot import wrap_model

    spec, requests, model, tokenizer, reference = requests_and_models
    lm = wrap_model(model, tokenizer, dataclasses.replace(spec, scoring="token_batches", batch_tokens=batch_tokens), "cpu", progress=False)
    scores = lm.loglikelihood(requests)
    assert len(scores) == len(reference) == len(requests)
    assert [greedy for _, greedy in scores] == [greedy for _, greedy in reference]
    assert [value for value, _ in scores] == pytest.approx([value for value, _ in reference], rel=1e-5, abs=1e-5)
    counts = lm.forward_counts
    assert counts["rows"] < len(requests)  # the one-token continuations shared one forward
    assert counts["padded_tokens"] >= counts["tokens"] and counts["forwards"] >= counts["tokens"] / max(batch_tokens, 256)
    if batch_tokens == 1:
        assert counts["forwards"] == counts["rows"] and counts["padded_tokens"] == counts["tokens"]


@needs_lm_eval
def test_batched_tokenisation_is_lm_evals(requests_and_models):
    from sparsebench.evaluate.zeroshot import wrap_model
    from sparsebench.evaluate.zeroshot_scoring import encode_all

    spec, requests, model, tokenizer, _ = requests_and_models
    lm = wrap_model(model, tokenizer, spec, "cpu", progress=False)
    one_at_a_time = [lm._encode_pair(*request.args) for request in requests]  # lm-eval's own calls
    encoded = encode_all(lm, [request.args for request in requests])
    assert len(encoded) < 2 * len(requests)  # each context encoded once, not once per choice
    lm._encoded = encoded
    lm.tokenizer.encode = None  # every string must now come from the batch
    assert [lm._encode_pair(*request.args) for request in requests] == one_at_a_time


def test_scoring_keys_leave_the_case_id_unchanged():
    """How the forwards are batched changes speed, not scores: cases run before these keys existed
    (or with the other scoring) keep their ids."""
    import copy

    from conftest import compose_config

    from sparsebench.results import case_id

    config = compose_config(["device=cpu", "eval=zeroshot"])
    assert config["eval"]["zeroshot"]["scoring"] == "token_batches" and config["eval"]["zeroshot"]["batch_tokens"] == "auto"
    before = copy.deepcopy(config)
    del before["eval"]["zeroshot"]["scoring"], before["eval"]["zeroshot"]["batch_tokens"]
    other = copy.deepcopy(config)
    other["eval"]["zeroshot"].update(scoring="hflm", batch_tokens=4096)
    assert case_id(config, "m", "cpu") == case_id(before, "m", "cpu") == case_id(other, "m", "cpu")
    fewer = copy.deepcopy(config)
    fewer["eval"]["zeroshot"]["limit"] = 10
    assert case_id(config, "m", "cpu") != case_id(fewer, "m", "cpu")
