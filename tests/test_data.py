"""Corpora from local files: split folders, the C4 document protocol, joining rules, the token cache."""

import gzip
import json

import pytest

from conftest import PTB_TEST, WIKITEXT_TEST
from sparsebench.data.corpora import CORPORA, read_rows, resolve_source
from sparsebench.data.tokens import calibration_tokens, evaluation_tokens
from sparsebench.errors import DataError
from sparsebench.testing.tiny_models import train_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer(wikitext_lines):
    return train_tiny_tokenizer(wikitext_lines)


def test_folder_resolves_each_split(tmp_path):
    for name in ("train.txt", "valid.txt", "test.txt"):
        (tmp_path / name).write_text(f"{name}\n")
    corpus = CORPORA["wikitext2"]
    assert resolve_source(corpus, "validation", str(tmp_path)).path.name == "valid.txt"
    assert resolve_source(corpus, "train", str(tmp_path)).path.name == "train.txt"
    (tmp_path / "train.txt").unlink()
    with pytest.raises(DataError, match=r"no file for the 'train' split .* the folder has test.txt, valid.txt"):
        resolve_source(corpus, "train", str(tmp_path))


def test_wikitext_rows_keep_line_ends_and_ptb_rows_are_stripped():
    wikitext = read_rows(resolve_source(CORPORA["wikitext2"], "test", str(WIKITEXT_TEST)))
    ptb = read_rows(resolve_source(CORPORA["ptb"], "test", str(PTB_TEST)))
    assert wikitext[1] == " = Robert <unk> = \n"
    assert ptb[0] == "no it was n't black monday" and all(row == row.strip() for row in ptb[:100])


def test_c4_calibration_draws_windows_from_long_documents(tmp_path, tokenizer, wikitext_lines):
    documents = [{"text": line, "url": "u", "timestamp": "t"} for line in wikitext_lines if line.strip()]
    path = tmp_path / "c4-train.json.gz"
    with gzip.open(path, "wt") as stream:
        stream.writelines(json.dumps(d) + "\n" for d in documents)
    source = resolve_source(CORPORA["c4"], "train", str(path))
    segments = calibration_tokens(source, tokenizer, nsamples=6, seqlen=32, seed=0, cache_dir=None)
    assert segments.shape == (6, 32)
    encoded = [tokenizer(d["text"])["input_ids"] for d in documents]
    for segment in segments.tolist():  # each window lies inside one document longer than seqlen
        assert any(len(doc) > 32 and any(doc[i : i + 32] == segment for i in range(len(doc) - 31)) for doc in encoded)
    again = calibration_tokens(source, tokenizer, nsamples=6, seqlen=32, seed=0, cache_dir=None)
    assert again.equal(segments)
    assert not calibration_tokens(source, tokenizer, nsamples=6, seqlen=32, seed=1, cache_dir=None).equal(segments)


def test_c4_evaluation_uses_the_first_1100_documents(tmp_path, tokenizer):
    path = tmp_path / "c4-validation.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc{i}"}) + "\n" for i in range(1200)))
    tokens = evaluation_tokens(resolve_source(CORPORA["c4"], "validation", str(path)), tokenizer, None)
    assert tokens.tolist() == tokenizer(" ".join(f"doc{i}" for i in range(1100)))["input_ids"]


def test_token_cache_is_reused_and_keyed_by_parameters(tmp_path, tokenizer):
    source = resolve_source(CORPORA["wikitext2"], "test", str(WIKITEXT_TEST))
    first = calibration_tokens(source, tokenizer, 4, 64, 0, tmp_path)
    files = list((tmp_path / "tokens").iterdir())
    assert len(files) == 1
    assert calibration_tokens(source, tokenizer, 4, 64, 0, tmp_path).equal(first)
    calibration_tokens(source, tokenizer, 4, 32, 0, tmp_path)
    assert len(list((tmp_path / "tokens").iterdir())) == 2


def test_unreadable_local_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "c4.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match="data.c4=.*could not read it"):
        read_rows(resolve_source(CORPORA["c4"], "train", str(bad)))
