"""The language-modelling corpora of the papers and how each is read.

Each corpus is read from the Hugging Face hub by default, or from a local copy given as
``data.<name>=PATH``: a file (used for every split) or a folder holding one file per split
(``train``, ``valid``/``validation``, ``test`` with a ``.txt``, ``.jsonl``, ``.json``, ``.json.gz``
or ``.parquet`` suffix). Text files hold one row of the dataset's text column per line.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from sparsebench.errors import ConfigError, DataError
from sparsebench.files import sha256_of

SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val"), "test": ("test",)}
SUFFIXES = (".txt", ".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")


@dataclass(frozen=True)
class Corpus:
    """How a corpus is fetched and turned into one text (evaluation) or documents (calibration)."""

    name: str
    hub_path: str
    hub_name: str | None
    column: str
    eval_split: str
    eval_joiner: str  # joins the rows of the evaluation split into one text
    train_joiner: str | None  # None: calibration draws windows from single documents (C4)
    hub_data_files: dict[str, str] = field(default_factory=dict)
    eval_max_documents: int | None = None  # C4: the first 1100 validation documents
    eval_max_segments: int | None = None  # C4: 256 segments
    keep_line_ends: bool = False  # WikiText rows end with a newline; PTB sentences are stripped
    hub_revision: str | None = None


CORPORA: dict[str, Corpus] = {
    corpus.name: corpus
    for corpus in (
        # Wanda/SparseGPT: test rows joined with "\n\n"; calibration windows from the train rows joined with " ".
        Corpus("wikitext2", "wikitext", "wikitext-2-raw-v1", "text", "test", "\n\n", " ", keep_line_ends=True),
        # SparseGPT datautils: PTB sentences joined with a space.
        # ptb_text_only is a script dataset, which datasets >= 4 no longer runs: read the hub's
        # automatic parquet conversion of it instead (same rows; not exercised offline here).
        Corpus("ptb", "ptb-text-only/ptb_text_only", "penn_treebank", "sentence", "test", " ", " ", hub_revision="refs/convert/parquet"),
        # Wanda/SparseGPT: calibration from the first train shard; evaluation on the first 1100
        # documents of the first validation shard, joined with a space, cut to 256 segments.
        Corpus(
            "c4",
            "allenai/c4",
            None,
            "text",
            "validation",
            " ",
            None,
            hub_data_files={
                "train": "en/c4-train.00000-of-01024.json.gz",
                "validation": "en/c4-validation.00000-of-00008.json.gz",
            },
            eval_max_documents=1100,
            eval_max_segments=256,
        ),
    )
}


def corpus_named(name: str, key: str) -> Corpus:
    if name not in CORPORA:
        raise ConfigError(f"{key}={name!r}: allowed values are {', '.join(sorted(CORPORA))}")
    return CORPORA[name]


@dataclass(frozen=True)
class TextSource:
    """One split of one corpus: a local file, or the hub."""

    corpus: Corpus
    split: str
    path: Path | None  # None: the hub

    def identity(self) -> dict:
        """What makes this source's text what it is (for cache keys and result documents)."""
        if self.path is None:
            return {"corpus": self.corpus.name, "hub": self.corpus.hub_path, "hub_name": self.corpus.hub_name, "revision": self.corpus.hub_revision, "split": self.split}
        stat = self.path.stat()
        return {"corpus": self.corpus.name, "path": str(self.path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def describe(self) -> str:
        return str(self.path) if self.path else f"hub:{self.corpus.hub_path}[{self.split}]"

    def content(self) -> str:
        """What the text is, wherever it lies: ``sha256:HEX`` of a local file, or the hub dataset and revision.

        Recorded in result documents so that tables can tell the same file in two folders (one cell)
        from two files at one path (an error).
        """
        if self.path is None:
            return f"hub:{self.corpus.hub_path}/{self.corpus.hub_name}@{self.corpus.hub_revision}[{self.split}]"
        stat = self.path.stat()
        key = (str(self.path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _CONTENT_HASHES:
            _CONTENT_HASHES[key] = "sha256:" + sha256_of(self.path)
        return _CONTENT_HASHES[key]


_CONTENT_HASHES: dict[tuple[str, int, int], str] = {}  # a file is hashed once per process while unchanged


def resolve_source(corpus: Corpus, split: str, local_path: str | None) -> TextSource:
    """Find the file for ``split`` under ``data.<name>``, or fall to the hub when no path is given."""
    if local_path is None:
        return TextSource(corpus, split, None)
    path = Path(local_path).expanduser()
    if not path.exists():
        raise DataError(f"data.{corpus.name}={local_path!r}: no such file or folder")
    if path.is_file():
        return TextSource(corpus, split, path)
    for stem in SPLIT_ALIASES[split]:
        for suffix in SUFFIXES:
            candidate = path / f"{stem}{suffix}"
            if candidate.exists():
                return TextSource(corpus, split, candidate)
    found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
    raise DataError(
        f"data.{corpus.name}={local_path!r}: no file for the {split!r} split "
        f"(looked for {'/'.join(SPLIT_ALIASES[split])} with {', '.join(SUFFIXES)}; the folder has {found})"
    )


def _read_local_rows(source: TextSource) -> list[str]:
    path = source.path
    name = path.name
    try:
        if name.endswith(".txt"):
            text = path.read_text(encoding="utf-8")
            lines = text.splitlines(keepends=True)
            return lines if source.corpus.keep_line_ends else [line.strip() for line in lines]
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return [str(v) for v in pq.read_table(path, columns=[source.corpus.column]).column(0).to_pylist()]
        if name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as handle:
                return [json.loads(line)[source.corpus.column] for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError) as error:
        raise DataError(f"data.{source.corpus.name}={str(path)!r}: could not read it: {error!r}") from error
    raise DataError(f"data.{source.corpus.name}={str(path)!r}: unsupported file type; use one of {', '.join(SUFFIXES)}")


def _read_hub_rows(source: TextSource) -> list[str]:
    try:
        from datasets import load_dataset
    except ImportError as error:  # pragma: no cover - datasets is a dependency
        raise DataError("reading corpora from the hub needs the 'datasets' package") from error
    corpus = source.corpus
    try:
        if corpus.hub_data_files:
            dataset = load_dataset(corpus.hub_path, data_files={source.split: corpus.hub_data_files[source.split]}, split=source.split)
        else:
            dataset = load_dataset(corpus.hub_path, corpus.hub_name, split=source.split, revision=corpus.hub_revision)
    except Exception as error:
        raise DataError(
            f"{corpus.name}: could not load {corpus.hub_path} ({source.split}) from the hub: {error}; "
            f"offline, give a local copy with data.{corpus.name}=PATH"
        ) from error
    return list(dataset[corpus.column])


def read_rows(source: TextSource) -> list[str]:
    """The rows of the corpus's text column for this split."""
    return _read_local_rows(source) if source.path else _read_hub_rows(source)
