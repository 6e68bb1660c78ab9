"""Values of the disk cache (tokens, dense work such as OWL's dense pass) are computed once even when
several processes (the slots of ``gpu_pool``) miss them at the same time."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import torch

from sparsebench.claims import claim_path
from sparsebench.disk_cache import cached, key_digest


def test_racing_cases_compute_a_value_once_and_the_others_wait_for_it(tmp_path):
    builds = []

    def build():
        builds.append(threading.current_thread().name)
        time.sleep(0.5)  # long enough for every other thread to find the claim taken
        return torch.arange(3)

    outcomes = {}
    start = threading.Barrier(4)

    def case(name):
        start.wait()
        outcomes[name] = cached(tmp_path, "dense", "summaries-owl", {"model": "m"}, build)

    threads = [threading.Thread(target=case, args=(f"case-{i}",), name=f"case-{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert [shared for _, shared in outcomes.values()].count(False) == 1
    assert outcomes[builds[0]][1] is False  # the builder says "computed", the three others "reused"
    assert all(torch.equal(value, torch.arange(3)) for value, _ in outcomes.values())
    assert list((tmp_path / "dense").glob("*.pt")) == [tmp_path / "dense" / f"summaries-owl-{key_digest({'model': 'm'})}.pt"]
    assert not list((tmp_path / ".claims").iterdir())  # released


def test_a_killed_holder_does_not_leave_the_others_waiting(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stem = f"summaries-owl-{key_digest({'model': 'm'})}"
    claim = claim_path(tmp_path, f"dense-{stem}")
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "process_start": None, "token": "x", "claimed_at": 0}))
    started = time.monotonic()
    value, shared = cached(tmp_path, "dense", "summaries-owl", {"model": "m"}, lambda: torch.ones(2))
    assert not shared and torch.equal(value, torch.ones(2))
    assert time.monotonic() - started < 5  # taken over at once, not after stale_after_s
    assert not claim.exists()
