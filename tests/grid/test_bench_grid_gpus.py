"""The pieces of benchmarks/bench_grid_gpus.py that do not need a GPU (its whole run: --cpu-smoke)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_grid_gpus.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_grid_gpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_slots_cover_every_gpu_k_times_first_slots_on_different_gpus(bench):
    assert bench.slot_list(["0"], 2) == ["0", "0"]
    assert bench.slot_list(["0", "1", "2"], 2) == ["0", "1", "2", "0", "1", "2"]
    assert bench.slot_list(["3", "5"], 1) == ["3", "5"]
    with pytest.raises(ValueError):
        bench.slot_list([], 1)


@pytest.mark.parametrize("slots", [1, 2, 3, 4, 8, 16])
def test_the_fault_grid_has_a_case_for_every_slot_and_one_more(bench, slots):
    ratios = bench.fault_ratios(slots)
    assert 4 * len(ratios) >= slots + 1 and len(set(ratios)) == len(ratios) and ratios[0] == 0.6
    assert 4 * (len(ratios) - 1) < slots + 1  # no more than needed


def test_idle_fraction_is_the_share_of_samples_at_zero(bench):
    assert bench.idle_fraction([0, 0, 50, 100]) == 0.5
    assert bench.idle_fraction([1, 2]) == 0.0
    with pytest.raises(ValueError):
        bench.idle_fraction([])


def test_dense_pass_counts_read_the_owl_documents(bench):
    def document(allocator, note=None, status="ok"):
        return {"config": {"allocator": {"name": allocator}}, "status": status, "notes": {"dense_summaries": note} if note else {}}

    docs = {"a": document("owl", "computed"), "b": document("owl", "reused from the cache"), "c": document("uniform"),
            "d": document("owl", "reused from the cache"), "e": document("owl", status="failed")}
    assert bench.dense_pass_counts(docs) == {"computed": 1, "reused": 2, "owl_cases": 3}


def test_the_random_words_tokenizer_has_the_shape_vocabulary_and_reads_the_corpus_without_unknowns(bench, tmp_path):
    tokenizer = bench.random_words_tokenizer(512)
    assert len(tokenizer) == 512
    folder = bench.write_random_corpus(tmp_path, 512, 1050, 230)
    train, test = (folder / "train.txt").read_text().split(), (folder / "test.txt").read_text().split()
    assert (len(train), len(test)) == (1050, 230)
    ids = tokenizer(" ".join(train), add_special_tokens=False)["input_ids"]
    assert len(ids) == 1050 and tokenizer.unk_token_id not in ids and max(ids) < 512
    assert bench.write_random_corpus(tmp_path / "again", 512, 1050, 230).joinpath("train.txt").read_text() == (folder / "train.txt").read_text()
