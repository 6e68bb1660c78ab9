"""Launchers: the local GPU pool (CPU "slots" here) and the SLURM preset's submission."""

from __future__ import annotations

import os
import sys
import time

import pytest

from hydra_plugins.sparsebench_launchers import slot_pool  # attributes looked up late: Hydra's plugin scan re-executes the module

from .conftest import documents, run_cli


def report_slot(seconds: float) -> tuple[str, int, float, float]:
    started = time.time()
    time.sleep(seconds)
    return os.environ["SPARSEBENCH_TEST_SLOT"], os.getpid(), started, time.time()


def die(_: object) -> None:
    os._exit(9)


def test_slot_pool_runs_the_tasks_on_every_slot_in_parallel():
    outcomes = slot_pool.run_on_slots(report_slot, [1.0, 1.0, 1.0, 1.0], ["a", "b"], "SPARSEBENCH_TEST_SLOT")
    # a queue: a slot takes the next task when it is free, so the split depends on how fast each worker starts (on a
    # loaded machine one slot may take three); every task runs, on both slots, one worker each, at the same time
    slots = [slot for slot, *_ in outcomes]
    assert len(slots) == 4 and set(slots) == {"a", "b"}
    workers = {slot: {pid for s, pid, *_ in outcomes if s == slot} for slot in "ab"}
    assert all(len(pids) == 1 for pids in workers.values()) and workers["a"] != workers["b"]  # one worker per slot
    spans = {slot: [(start, end) for s, _, start, end in outcomes if s == slot] for slot in "ab"}
    assert any(start_a < end_b and start_b < end_a for start_a, end_a in spans["a"] for start_b, end_b in spans["b"])  # in parallel


def test_slot_pool_survives_a_dead_worker():
    outcomes = slot_pool.run_on_slots(die, [None], ["0"], "SPARSEBENCH_TEST_SLOT")
    assert isinstance(outcomes[0], slot_pool.SlotCrashed)
    after = slot_pool.run_on_slots(report_slot, [0.0], ["0"], "SPARSEBENCH_TEST_SLOT")
    assert after[0][0] == "0"


def test_grid_on_two_slots_survives_a_killed_case_and_resumes(tiny_case, tmp_path):
    """3 cases on 2 parallel slots; one is killed mid-run (SIGKILL at eval): the others are intact,
    no half-written document is left; on re-launch the finished cases are skipped, the killed one redone."""
    grid = ["-m", "hydra/launcher=gpu_pool", "hydra.launcher.slots=[0,1]", *tiny_case, "sparsity.ratio=0.3,0.5,0.7"]
    crashed = run_cli([*grid, "debug.fail_at=eval", "debug.fail_mode=kill", "debug.fail_cases=*s0.5*"], tmp_path)
    assert crashed.returncode != 0, crashed.stderr[-2000:]
    assert "SlotCrashed" in crashed.stdout + crashed.stderr
    results = tmp_path / "results"
    first = documents(results)
    assert sorted(case.split("_")[3] for case in first) == ["s0.3", "s0.7"]
    assert all(document["status"] == "ok" for document in first.values())
    assert {document["environment"]["visible_devices"] for document in first.values()} <= {"0", "1"}
    assert not list(results.glob(".*partial"))

    resumed = run_cli(grid, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    second = documents(results)
    assert len(second) == 3 and all(document["status"] == "ok" for document in second.values())
    for case, document in first.items():
        assert second[case]["started_at"] == document["started_at"], f"{case} was run again"
    assert "already done" in resumed.stdout + resumed.stderr


def test_slurm_preset_makes_the_expected_submission(tmp_path, monkeypatch):
    """No cluster here: run the real multirun in-process and capture the sbatch file instead of submitting it."""
    submitit = pytest.importorskip("submitit")
    from submitit.slurm.slurm import SlurmExecutor

    submissions: list[str] = []

    class Captured(RuntimeError):
        pass

    def capture(self, command):
        submissions.append(self._make_submission_file_text(command, "test"))
        raise Captured("not submitted")

    monkeypatch.setattr(SlurmExecutor, "_submit_command", capture)
    fake_bin = tmp_path / "bin"  # submitit looks for srun before it builds anything
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(sys, "argv", [
        "sparsebench", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu-test", "hydra.launcher.timeout_min=90",
        "hydra.launcher.mem_gb=32", "hydra.launcher.gpus_per_node=1", f"results_dir={tmp_path}", "model.path=some/model",
        "metric=magnitude,wanda", "sparsity.ratio=0.5,0.6",
    ])
    from sparsebench import cli

    with pytest.raises(SystemExit):
        cli.main()
    assert len(submissions) == 1, "one job array for the grid"
    sbatch = submissions[0]
    for line in ("#SBATCH --partition=gpu-test", "#SBATCH --time=90", "#SBATCH --mem=32GB", "#SBATCH --gpus-per-node=1", "#SBATCH --array=0-3%4", "#SBATCH --job-name=sparsebench-adhoc"):
        assert line in sbatch, f"{line!r} not in:\n{sbatch}"
    assert "submitit.core._submit" in sbatch
