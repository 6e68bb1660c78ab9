"""``hydra/launcher=gpu_pool``: one job per GPU of this machine, each job seeing only its GPU.

The jobs of a sweep are run by ``slot_pool.run_on_slots``: as many in parallel as there are
``slots``, each in its own process with ``CUDA_VISIBLE_DEVICES=<slot>`` (so ``device=cuda`` is that
GPU). A job that dies takes down only itself: its return is a failure and the other jobs go on;
Hydra reports the failure when the sweep ends.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import cloudpickle
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from hydra_plugins.sparsebench_launchers.slot_pool import run_on_slots

log = logging.getLogger(__name__)


def _run_job(payload: bytes) -> bytes:
    """In the slot's process: what Hydra's own launchers do for one job."""
    idx, overrides, hydra_context, config, task_function, singleton_state = cloudpickle.loads(payload)
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    result = run_job(hydra_context=hydra_context, config=sweep_config, task_function=task_function, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    return cloudpickle.dumps(result)


class GpuPoolLauncher(Launcher):
    def __init__(self, slots: Sequence[Any], env_var: str = "CUDA_VISIBLE_DEVICES") -> None:
        self.slots = [str(slot) for slot in slots]
        self.env_var = env_var
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("gpu_pool: %d jobs on slots %s=%s", len(job_overrides), self.env_var, ",".join(self.slots))
        for idx, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
        state = Singleton.get_state()
        payloads = [
            cloudpickle.dumps((initial_job_idx + idx, list(overrides), self.hydra_context, self.config, self.task_function, state))
            for idx, overrides in enumerate(job_overrides)
        ]
        outcomes = run_on_slots(_run_job, payloads, self.slots, self.env_var)
        returns = []
        for overrides, outcome in zip(job_overrides, outcomes):
            if isinstance(outcome, bytes):
                returns.append(cloudpickle.loads(outcome))
            else:  # a SlotCrashed (Hydra's plugin scan may load this package twice, so no isinstance on it)
                returns.append(JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=outcome, task_name=self.config.hydra.job.name))
        return returns
