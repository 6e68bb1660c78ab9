"""Per-case claims: one process at a time per case, stale claims taken over, concurrent launches."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time

from sparsebench import claims
from sparsebench.claims import Busy, Claim, claim_case, claim_path

from .conftest import REPO, documents


def _write_claim(results, case, owner, age_s=0.0):
    path = claim_path(results, case)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(owner))
    if age_s:
        past = time.time() - age_s
        os.utime(path, (past, past))
    return path


def _other_host_owner():
    return {"host": "another-machine", "pid": 12345, "process_start": "1", "token": "theirs"}


def test_a_held_claim_makes_others_busy_and_release_frees_it(tmp_path):
    first = claim_case(tmp_path, "case-a")
    assert isinstance(first, Claim) and first.held()
    second = claim_case(tmp_path, "case-a")
    assert isinstance(second, Busy)  # this very process is alive: not stale
    assert second.owner["token"] == first.owner["token"]
    assert isinstance(claim_case(tmp_path, "case-b"), Claim)  # other cases are free
    first.release()
    assert not claim_path(tmp_path, "case-a").exists()
    assert isinstance(claim_case(tmp_path, "case-a"), Claim)


def test_the_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    owner = {**_other_host_owner(), "host": claims.socket.gethostname(), "pid": finished.pid, "process_start": None}
    _write_claim(tmp_path, "case", owner)  # fresh heartbeat, but its process is gone
    taken = claim_case(tmp_path, "case", stale_after_s=3600)
    assert isinstance(taken, Claim) and taken.held()
    assert not list(claim_path(tmp_path, "case").parent.glob("*.stale-*"))


def test_a_claim_from_another_host_is_busy_until_its_heartbeat_is_stale(tmp_path):
    _write_claim(tmp_path, "case", _other_host_owner(), age_s=10)
    busy = claim_case(tmp_path, "case", stale_after_s=60)
    assert isinstance(busy, Busy) and 9 < busy.heartbeat_age_s < 60
    assert "another-machine pid 12345" in busy.describe()
    _write_claim(tmp_path, "case", _other_host_owner(), age_s=120)
    taken = claim_case(tmp_path, "case", stale_after_s=60)
    assert isinstance(taken, Claim)


def test_the_heartbeat_keeps_a_claim_fresh_and_a_taken_over_claim_is_not_released(tmp_path):
    claim = claim_case(tmp_path, "case", heartbeat_s=0.05, stale_after_s=60)
    past = time.time() - 1000
    os.utime(claim.path, (past, past))
    time.sleep(0.3)
    assert time.time() - claim.path.stat().st_mtime < 5
    _write_claim(tmp_path, "case", _other_host_owner())  # someone took it over (it looked dead to them)
    assert not claim.held()
    claim.release()
    assert json.loads(claim.path.read_text())["token"] == "theirs"  # the new owner's claim stays


def _race(results, case, barrier, outcomes, stale_after_s):
    barrier.wait()
    claim = claim_case(results, case, stale_after_s=stale_after_s)
    outcomes.put(isinstance(claim, Claim))
    barrier.wait()  # hold the claim until every racer has looked


def _race_many(tmp_path, racers=8, stale_after_s=60.0):
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(racers)
    outcomes = context.Queue()
    processes = [context.Process(target=_race, args=(tmp_path, "case", barrier, outcomes, stale_after_s)) for _ in range(racers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    return [outcomes.get(timeout=5) for _ in processes]


def test_racing_processes_get_exactly_one_claim(tmp_path):
    assert sum(_race_many(tmp_path)) == 1


def test_racing_takers_of_a_stale_claim_get_exactly_one_claim(tmp_path):
    _write_claim(tmp_path, "case", _other_host_owner(), age_s=3600)
    assert sum(_race_many(tmp_path)) == 1


def test_two_launches_of_one_grid_never_run_a_case_twice(tiny_case, tmp_path):
    """Two `sparsebench -m` launches of the same 4-case grid on one results folder, started together:
    every case is run exactly once, each launch skipping the cases the other holds."""
    grid = ["-m", *tiny_case, "sparsity.ratio=0.3,0.4,0.5,0.6", "debug.delay_s=2.5"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    launches = [
        subprocess.Popen([sys.executable, "-m", "sparsebench.cli", *grid, f"hydra.sweep.dir={tmp_path}/multirun-{i}"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outputs = [launch.communicate(timeout=300)[0] for launch in launches]
    assert all(launch.returncode == 0 for launch in launches), outputs
    finished = [line for output in outputs for line in output.splitlines() if "][INFO] - result: " in line]
    results = documents(tmp_path / "results")
    assert len(results) == 4 and all(document["status"] == "ok" for document in results.values())
    assert len(finished) == 4, "\n".join(finished)  # no case written twice
    assert all("][INFO] - result: " in output for output in outputs), "both launches ran cases"
    assert "another process is running it" in "".join(outputs)
    assert not list((tmp_path / "results" / ".claims").iterdir()), "claims are released"
