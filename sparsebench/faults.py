"""Fault injection for testing resumable grids: make chosen cases fail or die at a chosen phase.

``debug.fail_at=PHASE`` with ``debug.fail_mode=raise`` raises inside the case (recorded as a
``failed`` document; the grid goes on); ``debug.fail_mode=kill`` kills the process with SIGKILL
(no document is written, as after a crash or a pre-empted job). ``debug.fail_cases`` is a glob on
the case id, so one case of a grid can be picked. ``debug.delay_s`` makes every case wait that
long before it loads its model (a stand-in for a long case, to test concurrent launches). None of
these keys changes the case id.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import signal
import time
from dataclasses import dataclass

from sparsebench.errors import ConfigError

log = logging.getLogger(__name__)

PHASES = ("load", "prune", "eval", "write")  # write: all measured, just before the document is written
MODES = ("raise", "kill")


class InjectedFault(RuntimeError):
    """Raised by ``debug.fail_mode=raise``."""


@dataclass(frozen=True)
class FaultSpec:
    phase: str | None = None
    mode: str = "raise"
    cases: str = "*"
    delay_s: float = 0.0


NO_FAULT = FaultSpec()


def validate_fault(debug: dict | None) -> FaultSpec:
    debug = debug or {}
    delay = debug.get("delay_s") or 0.0
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
        raise ConfigError(f"debug.delay_s={delay!r}: must be a number >= 0 (seconds)")
    phase = debug.get("fail_at")
    if phase is None:
        return FaultSpec(delay_s=float(delay)) if delay else NO_FAULT
    if phase not in PHASES:
        raise ConfigError(f"debug.fail_at={phase!r}: allowed values are null, {', '.join(PHASES)}")
    mode = debug.get("fail_mode", "raise")
    if mode not in MODES:
        raise ConfigError(f"debug.fail_mode={mode!r}: allowed values are {', '.join(MODES)}")
    return FaultSpec(phase, mode, str(debug.get("fail_cases") or "*"), float(delay))


def inject(fault: FaultSpec, phase: str, case: str) -> None:
    """Fail here if the configuration asks for it at this phase for this case (and wait first at ``load``)."""
    if phase == "load" and fault.delay_s:
        time.sleep(fault.delay_s)
    if fault.phase != phase or not fnmatch.fnmatchcase(case, fault.cases):
        return
    if fault.mode == "kill":
        log.warning("debug.fail_at=%s: killing the process in case %s", phase, case)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at phase {phase!r} (debug.fail_at={phase}, debug.fail_cases={fault.cases!r})")
