"""Small zero-shot task files written for the tests: our own examples, in each hub dataset's columns."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

HUB_ROWS = {
    "boolq": [
        {"question": "is the sky blue on a clear day", "passage": "On a clear day the sky looks blue, because air scatters blue light more than red light.", "idx": 0, "label": 1},
        {"question": "can penguins fly", "passage": "Penguins are birds that swim very well; their wings became flippers and they cannot fly.", "idx": 1, "label": 0},
        {"question": "does ice float on water", "passage": "Ice is less dense than liquid water, so a block of ice floats.", "idx": 2, "label": 1},
    ],
    "rte": [
        {"sentence1": "The bakery on the corner sells bread every morning.", "sentence2": "The bakery sells bread.", "label": 0, "idx": 0},
        {"sentence1": "Maria walked her dog in the park before dinner.", "sentence2": "Maria has no pets.", "label": 1, "idx": 1},
    ],
    "hellaswag": [
        {"ind": 4, "activity_label": "Making tea", "ctx_a": "A woman fills a kettle with water.", "ctx_b": "she", "ctx": "A woman fills a kettle with water. she",
         "endings": ["puts it on the stove [title] and waits.", "throws the kettle out the window.", "paints the kettle green.", "reads a book to the kettle."],
         "source_id": "own-0", "split": "val", "split_type": "indomain", "label": "0"},
        {"ind": 9, "activity_label": "Washing a car", "ctx_a": "A man sprays a red car with a hose.", "ctx_b": "then he", "ctx": "A man sprays a red car with a hose. then he",
         "endings": ["eats the sponge.", "scrubs the doors with a soapy sponge.", "drives into a lake.", "sings to the tyres."],
         "source_id": "own-1", "split": "val", "split_type": "indomain", "label": "1"},
    ],
    "winogrande": [
        {"sentence": "The cup did not fit in the bag because the _ was too small.", "option1": "cup", "option2": "bag", "answer": "2"},
        {"sentence": "Tom lent Ben his umbrella because _ was going out in the rain.", "option1": "Tom", "option2": "Ben", "answer": "2"},
        {"sentence": "The soup was colder than the tea, so _ needed heating.", "option1": "the soup", "option2": "the tea", "answer": "1"},
    ],
    "arc_easy": [
        {"id": "own-e1", "question": "Which of these is a liquid at room temperature?", "choices": {"text": ["water", "iron", "salt", "wood"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
        {"id": "own-e2", "question": "What does a plant need to make food?", "choices": {"text": ["darkness", "sunlight", "sand"], "label": ["1", "2", "3"]}, "answerKey": "2"},
    ],
    "arc_challenge": [
        {"id": "own-c1", "question": "Why does a metal spoon feel colder than a wooden spoon at the same temperature?", "choices": {"text": ["metal conducts heat away from the hand faster", "metal is always colder", "wood makes heat", "metal is heavier"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
        {"id": "own-c2", "question": "Which change is chemical?", "choices": {"text": ["melting ice", "burning paper", "cutting bread", "folding a shirt"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    ],
    "openbookqa": [
        {"id": "own-o1", "question_stem": "A magnet will pick up", "choices": {"text": ["a paper clip", "a glass marble", "a rubber band", "a cotton ball"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
        {"id": "own-o2", "question_stem": "The moon shines at night because it", "choices": {"text": ["makes its own light", "reflects sunlight", "is on fire", "is made of glass"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    ],
    "piqa": [
        {"goal": "How do I keep bread fresh for longer?", "sol1": "Keep it in a closed bag in a cool dry place.", "sol2": "Keep it in a bowl of water.", "label": 0},
        {"goal": "To open a jar with a tight lid,", "sol1": "freeze the jar overnight.", "sol2": "run the lid under hot water, then twist it.", "label": 1},
        {"goal": "How can I dry wet shoes?", "sol1": "Stuff them with newspaper and leave them in a warm room.", "sol2": "Put them in the fridge.", "label": 0},
    ],
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_task_copies(root: Path) -> dict[str, Path]:
    """Each task's split in a release format a user would have; {task: path for data.<task>}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {}
    for task in ("boolq", "rte", "winogrande"):
        paths[task] = write_jsonl(root / task / "validation.jsonl", HUB_ROWS[task])  # the file itself
    write_jsonl(root / "hellaswag" / "valid.jsonl", HUB_ROWS["hellaswag"])
    paths["hellaswag"] = root / "hellaswag"  # a folder holding the split
    for task in ("arc_easy", "openbookqa"):
        write_jsonl(root / task / "test.jsonl", HUB_ROWS[task])
        paths[task] = root / task
    # ARC-Challenge as the hub stores it: a Parquet shard named after the split
    folder = root / "arc_challenge"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(HUB_ROWS["arc_challenge"]), folder / "test-00000-of-00001.parquet")
    paths["arc_challenge"] = folder
    # PIQA's original release: the rows without labels, and the labels one a line
    piqa = root / "piqa"
    write_jsonl(piqa / "valid.jsonl", [{k: v for k, v in row.items() if k != "label"} for row in HUB_ROWS["piqa"]])
    (piqa / "valid-labels.lst").write_text("".join(f"{row['label']}\n" for row in HUB_ROWS["piqa"]))
    paths["piqa"] = piqa
    return paths


def builtin_task(name: str):
    """lm-eval's own task, from its shipped YAML, with the hub download answered by the test's rows."""
    import datasets
    from lm_eval.tasks import TaskManager

    from sparsebench.evaluate.zeroshot_tasks import TASKS, definition_path
    from lm_eval.tasks._yaml_loader import load_yaml

    yaml = load_yaml(definition_path(TASKS[name]))
    rows = datasets.Dataset.from_list(HUB_ROWS[name])
    splits = {yaml.get(key) for key in ("training_split", "validation_split", "test_split")} - {None}
    with mock.patch("datasets.load_dataset", return_value=datasets.DatasetDict({split: rows for split in splits})) as download:
        task = TaskManager(include_defaults=False).load([str(definition_path(TASKS[name]))])["tasks"][name]
    assert download.call_args.kwargs == {"path": yaml["dataset_path"], "name": yaml.get("dataset_name")}, "not the built-in definition"
    return task
