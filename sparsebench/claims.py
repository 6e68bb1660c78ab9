"""Per-case claims: at most one process runs a case at a time, across launches and machines.

Two launches of one grid on one results folder (two shells, or a re-launch while a SLURM array
still runs) would otherwise run the same case twice at once. Before a case runs, its process
creates ``<results_dir>/.claims/<case_id>.claim`` with ``O_CREAT | O_EXCL`` (atomic on local
file systems and on NFS v3 and later) holding its owner: host, pid, the process's start time and
a random token. While the case runs, a thread touches the file every ``heartbeat_s`` seconds;
the file is removed when the case ends.

A claim is stale, and is taken over, when its heartbeat is older than ``stale_after_s`` (a
machine that died, a job that was pre-empted), or at once when its owner ran on this host and
that process no longer exists (SIGKILL, out of memory). Taking over renames the stale file to a
name of the taker's own first, which only one taker can do, then creates a fresh claim.
Heartbeats compare file modification times with this host's clock, so hosts sharing a folder
need clocks within ``stale_after_s`` of each other (NTP does far better).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sparsebench.files import shared_mode

log = logging.getLogger(__name__)

CLAIMS_FOLDER = ".claims"
DEFAULT_HEARTBEAT_S = 30.0
DEFAULT_STALE_AFTER_S = 300.0


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (tells a reused pid apart), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    current = _process_start(pid)
    return started is None or current is None or current == started


def _this_owner() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "process_start": _process_start(pid), "token": uuid.uuid4().hex, "claimed_at": time.time()}


@dataclass
class Claim:
    """A held claim; ``release()`` (or leaving the ``with`` block) removes it."""

    path: Path
    owner: dict
    heartbeat_s: float
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    if not self.held():
                        log.error("the claim %s was taken over by another process", self.path)
                        return
                    os.utime(self.path)
                except OSError as error:
                    log.warning("heartbeat of %s failed: %s", self.path, error)

        self._thread = threading.Thread(target=beat, name=f"claim-heartbeat-{self.path.stem}", daemon=True)
        self._thread.start()

    def held(self) -> bool:
        """Whether the claim file still carries this owner's token (not taken over)."""
        holder = read_owner(self.path)
        return holder is not None and holder.get("token") == self.owner["token"]

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass(frozen=True)
class Busy:
    """Another live process holds the claim."""

    path: Path
    owner: dict
    heartbeat_age_s: float

    def describe(self) -> str:
        owner = self.owner
        return f"{owner.get('host', '?')} pid {owner.get('pid', '?')} (heartbeat {self.heartbeat_age_s:.0f} s ago; {self.path})"


def read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return owner if isinstance(owner, dict) else None


def claim_path(results_dir: Path, case: str) -> Path:
    return Path(results_dir) / CLAIMS_FOLDER / f"{case}.claim"


def _create(path: Path, owner: dict) -> bool:
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, shared_mode())
    except FileExistsError:
        return False
    with os.fdopen(handle, "w") as stream:
        json.dump(owner, stream)
        stream.flush()
        os.fsync(stream.fileno())
    return True


def stale_reason(path: Path, stale_after_s: float) -> tuple[str | None, dict, float]:
    """``(why the claim is stale or None, its owner, its heartbeat age in seconds)``."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return "released", {}, 0.0
    owner = read_owner(path)
    if owner is None:
        # Being written right now (created, not yet filled) unless it has been like that for long.
        return (f"unreadable for {age:.0f} s" if age > stale_after_s else None), {}, age
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) and not _alive(owner["pid"], owner.get("process_start")):
        return f"its owner (pid {owner['pid']} on this host) no longer runs", owner, age
    if age > stale_after_s:
        return f"no heartbeat for {age:.0f} s (more than {stale_after_s:g} s)", owner, age
    return None, owner, age


def claim_case(
    results_dir: Path, case: str, heartbeat_s: float = DEFAULT_HEARTBEAT_S, stale_after_s: float = DEFAULT_STALE_AFTER_S
) -> Claim | Busy:
    """Claim ``case`` for this process: a ``Claim`` (heartbeat running), or ``Busy`` if another holds it."""
    path = claim_path(results_dir, case)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = _this_owner()
    for _attempt in range(20):
        if _create(path, owner):
            claim = Claim(path, owner, heartbeat_s)
            claim.start_heartbeat()
            return claim
        reason, holder, age = stale_reason(path, stale_after_s)
        if reason is None:
            return Busy(path, holder, age)
        if reason == "released":
            continue
        aside = path.with_name(f"{path.name}.stale-{owner['token']}")
        try:
            os.rename(path, aside)  # only one of several takers gets here; the others retry and find our claim
        except FileNotFoundError:
            continue
        moved = read_owner(aside)
        if holder and (moved or {}).get("token") != holder.get("token"):
            # Another taker replaced the stale claim with its own between our look and our rename:
            # put that fresh claim back (link fails if the name is taken again) and look again.
            try:
                os.link(aside, path)
            except FileExistsError:
                log.error("claim on %s: a fresh claim was moved aside by a race and could not be restored", case)
            aside.unlink(missing_ok=True)
            continue
        log.warning("taking over the claim on %s: %s (was %s)", case, reason, holder or "unreadable")
        aside.unlink(missing_ok=True)
    raise RuntimeError(f"could not claim {case} at {path}: it changed hands 20 times in a row")
