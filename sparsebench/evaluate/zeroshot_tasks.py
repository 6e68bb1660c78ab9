"""The zero-shot tasks of the pruning papers, as lm-eval defines them, from the hub or a local copy.

Each task here *is* lm-eval's task of the same name: its YAML under ``lm_eval/tasks`` (prompt,
choices, target, metrics, version), read by lm-eval's own loader, so the requests are the ones
``lm_eval --tasks NAME`` builds. A local copy (``data.<task>=PATH``) changes only where the
documents come from: the YAML's ``dataset_path`` gives way to a ``custom_dataset`` that hands
lm-eval the rows of the local file, and the split fields name only the split lm-eval evaluates
(ARC and OpenBookQA: ``test``; the others: ``validation``), so nothing else has to exist locally.

A local copy is the original dataset's own release of that split: JSON Lines or Parquet with the
hub dataset's columns (the columns each task reads are checked, with their types, before any model
loads), given as the file or as a folder holding ``<split>.jsonl`` / ``<split>.parquet`` /
``<split>-NNNNN-of-NNNNN.parquet`` (``valid``/``val`` also name the validation split). PIQA's
original release keeps its labels apart: ``valid.jsonl`` with an aligned ``valid-labels.lst``
(one 0/1 a line), read as the hub's ``label`` column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sparsebench.data.corpora import SPLIT_ALIASES
from sparsebench.errors import DataError

LM_EVAL_VERSION = "0.4.13"  # the task YAMLs and the loader API below are those of this release


@dataclass(frozen=True)
class ZeroShotTask:
    """One lm-eval task and the hub dataset split it evaluates."""

    name: str  # lm-eval's task name
    definition: str  # lm-eval's YAML, relative to lm_eval/tasks
    hub: str  # the hub dataset lm-eval reads, for messages
    split: str  # the split lm-eval evaluates: "validation" or "test"
    columns: dict  # column -> allowed Python types, for the columns the task reads
    labels_file: str | None = None  # the original release's separate label file (PIQA)

    def expected_copy(self) -> str:
        """What ``data.<name>`` must point at, for messages."""
        columns = ", ".join(f"{name} ({'/'.join(t.__name__ for t in types)})" for name, types in self.columns.items())
        text = f"the {self.split} split of {self.hub} as .jsonl or .parquet with columns {columns}"
        if self.labels_file:
            text += f", or the original release: a folder with valid.jsonl and {self.labels_file}"
        return text


_STR, _INT, _LIST, _DICT = (str,), (int,), (list,), (dict,)

TASKS: dict[str, ZeroShotTask] = {
    task.name: task
    for task in (
        ZeroShotTask("boolq", "super_glue/boolq/default.yaml", "aps/super_glue (boolq)", "validation",
                     {"passage": _STR, "question": _STR, "label": _INT}),
        ZeroShotTask("rte", "glue/rte/default.yaml", "nyu-mll/glue (rte)", "validation",
                     {"sentence1": _STR, "sentence2": _STR, "label": _INT}),
        ZeroShotTask("hellaswag", "hellaswag/hellaswag.yaml", "Rowan/hellaswag", "validation",
                     {"activity_label": _STR, "ctx_a": _STR, "ctx_b": _STR, "endings": _LIST, "label": (str, int)}),
        ZeroShotTask("winogrande", "winogrande/default.yaml", "allenai/winogrande (winogrande_xl)", "validation",
                     {"sentence": _STR, "option1": _STR, "option2": _STR, "answer": _STR}),
        ZeroShotTask("arc_easy", "arc/arc_easy.yaml", "allenai/ai2_arc (ARC-Easy)", "test",
                     {"question": _STR, "choices": _DICT, "answerKey": _STR}),
        ZeroShotTask("arc_challenge", "arc/arc_challenge.yaml", "allenai/ai2_arc (ARC-Challenge)", "test",
                     {"question": _STR, "choices": _DICT, "answerKey": _STR}),
        ZeroShotTask("openbookqa", "openbookqa/openbookqa.yaml", "allenai/openbookqa (main)", "test",
                     {"question_stem": _STR, "choices": _DICT, "answerKey": _STR}),
        ZeroShotTask("piqa", "piqa/piqa.yaml", "baber/piqa", "validation",
                     {"goal": _STR, "sol1": _STR, "sol2": _STR, "label": _INT}, labels_file="valid-labels.lst"),
    )
}


# ----------------------------------------------------------------------------- local copies


def _split_files(task: ZeroShotTask, key: str, folder: Path) -> list[Path]:
    """The file(s) of the task's split in a folder: one JSON Lines file, or Parquet shards."""
    for stem in SPLIT_ALIASES[task.split]:
        for name in (f"{stem}.jsonl", f"{stem}.json", f"{stem}.parquet"):
            if (folder / name).is_file():
                return [folder / name]
        shards = sorted(folder.glob(f"{stem}-*-of-*.parquet"))
        if shards:
            return shards
    found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise DataError(
        f"{key}={str(folder)!r}: no file for the {task.split!r} split that lm-eval's {task.name} evaluates "
        f"(looked for {'/'.join(SPLIT_ALIASES[task.split])} .jsonl/.json/.parquet; the folder has {found})"
    )


def _read_file(key: str, path: Path) -> list[dict]:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if path.suffix in (".jsonl", ".json"):
            with path.open(encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
        raise DataError(f"{key}: could not read {str(path)!r}: {error}") from error
    raise DataError(f"{key}: {str(path)!r} is neither JSON Lines (.jsonl, .json) nor Parquet (.parquet)")


def _attach_labels(task: ZeroShotTask, key: str, rows: list[dict], labels_path: Path) -> None:
    """PIQA's original release: labels in a separate file, one a line, aligned with the rows."""
    if not labels_path.is_file():
        raise DataError(f"{key}: the rows have no 'label' column and the label file {str(labels_path)!r} is missing ({task.expected_copy()})")
    lines = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) != len(rows):
        raise DataError(f"{key}: {str(labels_path)!r} has {len(lines)} labels for {len(rows)} rows")
    for row, line in zip(rows, lines):
        if line not in ("0", "1"):
            raise DataError(f"{key}: {str(labels_path)!r} holds {line!r}; labels are 0 or 1")
        row["label"] = int(line)


def _check_columns(task: ZeroShotTask, key: str, rows: list[dict], source: str) -> None:
    if not rows:
        raise DataError(f"{key}: {source} holds no rows")
    for number, row in enumerate(rows, start=1):
        for column, types in task.columns.items():
            if column not in row:
                raise DataError(f"{key}: row {number} of {source} has no {column!r} column; lm-eval's {task.name} needs {task.expected_copy()}")
            value = row[column]
            if not isinstance(value, types) or (types == _INT and isinstance(value, bool)):
                raise DataError(
                    f"{key}: row {number} of {source}: {column}={value!r} is {type(value).__name__}, "
                    f"the hub's {column} is {'/'.join(t.__name__ for t in types)} (lm-eval would misread it)"
                )


def read_local_copy(task: ZeroShotTask, path: str) -> list[dict]:
    """The rows of the task's evaluated split from ``data.<task>=path``, checked against the hub's columns."""
    key = f"data.{task.name}"
    location = Path(path).expanduser()
    if not location.exists():
        raise DataError(f"{key}={path!r}: no such file or folder; it should hold {task.expected_copy()}")
    if location.is_dir() and task.labels_file and (location / "valid.jsonl").is_file():
        files = [location / "valid.jsonl"]
    else:
        files = _split_files(task, key, location) if location.is_dir() else [location]
    rows = [row for file in files for row in _read_file(key, file)]
    if task.labels_file and rows and "label" not in rows[0]:
        _attach_labels(task, key, rows, files[0].parent / task.labels_file)
    _check_columns(task, key, rows, " + ".join(str(f) for f in files))
    return rows


# ----------------------------------------------------------------------------- lm-eval task configs


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def definition_path(task: ZeroShotTask) -> Path:
    """lm-eval's own YAML of the task."""
    return lm_eval_tasks_dir() / task.definition


def _dataset_from_rows(split: str, rows: list[dict], **_task_metadata):
    """``custom_dataset`` for lm-eval: it passes the task's metadata as keyword arguments."""
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def local_task_config(task: ZeroShotTask, rows: list[dict]) -> dict:
    """lm-eval's config of the task, reading ``rows`` instead of the hub; prompt and metrics untouched."""
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's own YAML loader (include:, !function)

    config = load_yaml(definition_path(task))
    for structural in ("tag", "group", "task_list"):  # as lm-eval's TaskFactory does for a single task
        config.pop(structural, None)
    config.update(
        dataset_path=None,
        dataset_name=None,
        dataset_kwargs=None,
        custom_dataset=partial(_dataset_from_rows, task.split, rows),
        training_split=None,
        validation_split=task.split if task.split == "validation" else None,
        test_split=task.split if task.split == "test" else None,
    )
    return config
