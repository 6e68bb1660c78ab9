"""The ``sparsebench`` command: compose the Hydra config, validate it, run the case, record it.

Nothing else happens here; everything below takes plain values (``CaseSpec``).
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sparsebench.config import register_schema, validate
from sparsebench.errors import SparsebenchError
from sparsebench.results import check_results_dir
from sparsebench.runner import run_case

log = logging.getLogger("sparsebench")

register_schema()


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    try:
        spec = validate(resolved)
        check_results_dir(spec.results_dir)  # read-only, full: said now, not after the model has loaded
    except SparsebenchError as error:
        log.error("configuration error: %s", error)
        if _is_multirun():
            return  # the other cases of the grid go on
        print(f"sparsebench: error: {error}", file=sys.stderr)
        sys.exit(2)
    document = run_case(spec)
    if document["status"] == "claimed" and not _is_multirun():
        owner = document["claimed_by"]
        print(f"sparsebench: case {document['case_id']} is being run by {owner.get('host')} pid {owner.get('pid')}; not started", file=sys.stderr)
        sys.exit(3)
    if document["status"] != "ok" and not _is_multirun():
        print(f"sparsebench: case failed: {document['error']['type']}: {document['error']['message']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
