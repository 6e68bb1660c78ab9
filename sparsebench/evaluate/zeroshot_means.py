"""The mean zero-shot accuracy as the pruning papers report it, with the metric each task contributes.

Wanda (Sun et al., 2023, arXiv 2306.11695) reports, next to perplexity, lm-eval accuracies on
BoolQ, RTE, HellaSwag, WinoGrande, ARC-Easy, ARC-Challenge and OpenBookQA and their mean. Its code
(``lib/eval.py::eval_zero_shot``, an lm-eval fork) returns lm-eval's whole result; the table's
numbers are the plain ``acc`` of each task: its dense LLaMA-7B HellaSwag, 56.9, is lm-eval's
``acc`` (that model's ``acc_norm`` is about 76), and so are its ARC and OpenBookQA columns.
OWL (arXiv 2310.05175), NeuroAL (arXiv 2411.07066, ``lib/eval.py`` "adapted from OWL") and TRIM
(arXiv 2505.16743) run the same seven tasks through Wanda's ``eval_zero_shot`` unchanged, 0-shot.
SparseGPT's own paper uses another set (LAMBADA, PIQA, ARC, StoryCloze); its seven-task numbers
come from the later papers, which re-ran it this way. PIQA is in none of these means.

A mean is recorded over the tasks of its convention that were evaluated, with the ones missing
listed and ``complete`` saying whether all were there; it is comparable with a paper only when
complete and evaluated without ``eval.zeroshot.limit``.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


@dataclass(frozen=True)
class MeanConvention:
    name: str
    papers: str
    metric_per_task: dict  # task -> the metric the paper's mean takes from it

    def compute(self, task_results: dict) -> dict:
        present = [task for task in self.metric_per_task if task in task_results]
        values = [task_results[task][self.metric_per_task[task]] for task in present]
        return {
            "value": sum(values) / len(values) if values else None,
            "metric_per_task": dict(self.metric_per_task),
            "tasks_evaluated": present,
            "tasks_missing": [task for task in self.metric_per_task if task not in task_results],
            "complete": len(present) == len(self.metric_per_task),
            "papers": self.papers,
        }


MEANS = (
    MeanConvention(
        "wanda",
        "Wanda; OWL, NeuroAL and TRIM (same seven tasks through Wanda's eval_zero_shot, 0-shot)",
        {task: "acc" for task in PAPER_TASKS},
    ),
)


def paper_means(task_results: dict) -> dict:
    """``{convention: {value, metric_per_task, tasks_evaluated, tasks_missing, complete, papers}}``."""
    return {convention.name: convention.compute(task_results) for convention in MEANS}
