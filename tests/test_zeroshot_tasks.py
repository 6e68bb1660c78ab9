"""Local copies of the zero-shot tasks build exactly the requests of lm-eval's own tasks."""

from __future__ import annotations

import pytest

pytest.importorskip("lm_eval")

from zeroshot_examples import HUB_ROWS, builtin_task, write_jsonl, write_task_copies  # noqa: E402

from sparsebench.errors import DataError  # noqa: E402
from sparsebench.evaluate.zeroshot import ZeroShotSpec, load_tasks  # noqa: E402
from sparsebench.evaluate.zeroshot_tasks import TASKS, read_local_copy  # noqa: E402


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    return write_task_copies(tmp_path_factory.mktemp("zeroshot-data"))


def requests(task) -> list:
    task.build_all_requests(limit=None, rank=0, world_size=1)
    return [(i.doc_id, i.idx, i.request_type, i.arguments) for i in task.instances]


@pytest.mark.parametrize("name", list(TASKS))
def test_local_copy_builds_the_requests_of_lm_evals_task(name, copies):
    local = load_tasks(ZeroShotSpec((TASKS[name],), {name: str(copies[name])}))[name].lm_eval_task
    builtin = builtin_task(name)
    expected = requests(builtin)
    assert requests(local) == expected
    assert len(expected) >= 2 * len(HUB_ROWS[name])  # one request per choice, at least two choices a document
    assert [local.doc_to_target(doc) for doc in local.eval_docs] == [builtin.doc_to_target(doc) for doc in builtin.eval_docs]
    assert local.config.metric_list == builtin.config.metric_list
    assert local.config.metadata["version"] == builtin.config.metadata["version"]


def test_requests_are_the_known_prompts(copies):
    """Spot checks against lm-eval's documented formats (so both sides cannot be wrong alike)."""
    boolq = requests(load_tasks(ZeroShotSpec((TASKS["boolq"],), {"boolq": str(copies["boolq"])}))["boolq"].lm_eval_task)
    first = HUB_ROWS["boolq"][0]
    assert boolq[:2] == [
        (0, 0, "loglikelihood", (f"{first['passage']}\nQuestion: {first['question']}?\nAnswer:", " no")),
        (0, 1, "loglikelihood", (f"{first['passage']}\nQuestion: {first['question']}?\nAnswer:", " yes")),
    ]
    piqa = load_tasks(ZeroShotSpec((TASKS["piqa"],), {"piqa": str(copies["piqa"])}))["piqa"].lm_eval_task
    assert [piqa.doc_to_target(doc) for doc in piqa.eval_docs] == [row["label"] for row in HUB_ROWS["piqa"]]
    assert requests(piqa)[1][3] == ("Question: How do I keep bread fresh for longer?\nAnswer:", " Keep it in a bowl of water.")
    hellaswag = requests(load_tasks(ZeroShotSpec((TASKS["hellaswag"],), {"hellaswag": str(copies["hellaswag"])}))["hellaswag"].lm_eval_task)
    assert hellaswag[0][3] == ("Making tea: A woman fills a kettle with water. She", " puts it on the stove. and waits.")
    winogrande = requests(load_tasks(ZeroShotSpec((TASKS["winogrande"],), {"winogrande": str(copies["winogrande"])}))["winogrande"].lm_eval_task)
    assert winogrande[:2] == [
        (0, 0, "loglikelihood", ("The cup did not fit in the bag because the cup", " was too small.")),
        (0, 1, "loglikelihood", ("The cup did not fit in the bag because the bag", " was too small.")),
    ]


@pytest.mark.parametrize(
    ("name", "rows", "message"),
    [
        ("boolq", [{"question": "q", "passage": "p", "answer": True}], "row 1 of .* has no 'label' column"),
        ("boolq", [{"question": "q", "passage": "p", "label": "1"}], "label='1' is str, the hub's label is int"),
        ("boolq", [{"question": "q", "passage": "p", "label": True}], "label=True is bool"),
        ("winogrande", [{"sentence": "a _ b", "option1": "x", "option2": "y", "answer": 1}], "answer=1 is int, the hub's answer is str"),
        ("arc_easy", [], "holds no rows"),
    ],
)
def test_bad_local_copies_name_file_and_column(tmp_path, name, rows, message):
    path = write_jsonl(tmp_path / "copy.jsonl", rows)
    with pytest.raises(DataError, match=f"data.{name}: .*{message}"):
        read_local_copy(TASKS[name], str(path))


def test_piqa_original_release_needs_its_aligned_labels(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "label"} for row in HUB_ROWS["piqa"]]
    write_jsonl(tmp_path / "valid.jsonl", rows)
    with pytest.raises(DataError, match="valid-labels.lst' is missing"):
        read_local_copy(TASKS["piqa"], str(tmp_path))
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(DataError, match="has 2 labels for 3 rows"):
        read_local_copy(TASKS["piqa"], str(tmp_path))
    (tmp_path / "valid-labels.lst").write_text("0\n1\n2\n")
    with pytest.raises(DataError, match="holds '2'; labels are 0 or 1"):
        read_local_copy(TASKS["piqa"], str(tmp_path / "valid.jsonl"))


def test_folder_without_the_evaluated_split(tmp_path):
    write_jsonl(tmp_path / "validation.jsonl", HUB_ROWS["arc_easy"])  # lm-eval evaluates ARC on its test split
    with pytest.raises(DataError, match="no file for the 'test' split that lm-eval's arc_easy evaluates .* the folder has validation.jsonl"):
        read_local_copy(TASKS["arc_easy"], str(tmp_path))
