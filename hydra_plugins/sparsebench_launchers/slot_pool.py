"""Run tasks in parallel, one per slot, each in a process that sees only its slot.

A slot is a value for an environment variable (a GPU index for ``CUDA_VISIBLE_DEVICES``). Each
slot has one worker process (spawned, so nothing of the parent's CUDA state is inherited) whose
variable is set before the task imports anything that reads it. Tasks are taken from a shared
queue by whichever slot is free. A task that kills its worker (out of memory, SIGKILL) is
reported as ``SlotCrashed`` for that task only; the slot gets a fresh worker and goes on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


class SlotCrashed(RuntimeError):
    """The worker process of a slot died while running a task."""


def _enter_slot(env_var: str, slot: str) -> None:
    os.environ[env_var] = slot


def _worker(env_var: str, slot: str) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_enter_slot, initargs=(env_var, slot))


def run_on_slots(function: Callable[[Any], Any], arguments: Sequence[Any], slots: Sequence[str], env_var: str) -> list[Any]:
    """``[function(a) for a in arguments]``, run on the slots in parallel; a crash gives a ``SlotCrashed`` in its place."""
    if not slots:
        raise ValueError("hydra.launcher.slots: needs at least one slot (e.g. [0, 1] for two GPUs)")
    pending: queue.Queue[int] = queue.Queue()
    for position in range(len(arguments)):
        pending.put(position)
    results: list[Any] = [None] * len(arguments)

    def serve(slot: str) -> None:
        executor = _worker(env_var, slot)
        try:
            while True:
                try:
                    position = pending.get_nowait()
                except queue.Empty:
                    return
                log.info("task %d on slot %s=%s", position, env_var, slot)
                try:
                    results[position] = executor.submit(function, arguments[position]).result()
                except BrokenProcessPool:
                    log.error("task %d: the worker on slot %s=%s died; the slot goes on with a fresh worker", position, env_var, slot)
                    results[position] = SlotCrashed(f"the worker process on slot {env_var}={slot} died while running task {position}")
                    executor.shutdown(wait=False, cancel_futures=True)
                    executor = _worker(env_var, slot)
        finally:
            executor.shutdown(wait=True)

    threads = [threading.Thread(target=serve, args=(str(slot),), name=f"slot-{slot}") for slot in slots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
