"""The configuration the CLI would compose, for tests and benchmarks, and where the local corpora live."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout (tests and benchmarks run from it)


def compose_config(overrides: list[str]) -> dict:
    """The resolved configuration ``sparsebench OVERRIDES`` would build (Hydra's compose API)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from sparsebench.config import register_schema

    register_schema()
    with initialize_config_module(config_module="sparsebench.conf", version_base=None):
        return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)


@lru_cache(maxsize=1)
def local_data_dir() -> Path:
    """``paths.data_dir`` of the composed configuration (``SPARSEBENCH_DATA``, ``conf/local/``, or
    ``../shared/data``), a relative path read from the checkout as the README's commands read it."""
    data_dir = Path(compose_config([])["paths"]["data_dir"]).expanduser()
    return data_dir if data_dir.is_absolute() else (REPO / data_dir).resolve()


def missing_data_reason(path: Path) -> str:
    """One line for a test that skips because a local corpus is not there."""
    return f"no local copy at {path}: set paths.data_dir (SPARSEBENCH_DATA or sparsebench/conf/local/default.yaml) to the folder of wikitext2-tok/, ptb/ and zeroshot/"
