"""The repository's shape: documentation links resolve, no machine paths in docs, no ``sys.path`` edits,
and the console scripts point at importable functions."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docs" / "research").glob("*.md")), REPO / "docs" / "data" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MACHINE_PATH = re.compile(r"(?<![\w.<>-])/(tmp|work|root|home)/")


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # commands, not links
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:|#", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = [target for target in relative_links(page) if not (page.parent / target.split("#")[0]).exists()]
    assert not broken, f"{page.relative_to(REPO)}: links to missing files: {broken}"


def test_the_link_check_sees_links():
    assert {"docs/gemma3.md", "docs/grid.md#several-gpus"} <= set(relative_links(REPO / "README.md"))


def test_docs_and_their_data_name_no_machine_paths():
    files = [*PAGES, *(p for p in (REPO / "docs").rglob("*") if p.suffix in {".md", ".json", ".txt", ".log", ".csv"})]
    found = {str(p.relative_to(REPO)) for p in files if MACHINE_PATH.search(p.read_text(encoding="utf-8"))}
    assert not found, f"absolute paths of a machine (use a placeholder such as <results_dir>): {sorted(found)}"


def test_scripts_and_tests_do_not_edit_sys_path():
    scripts = [*(REPO / "benchmarks").glob("*.py"), *(REPO / "sweeps").glob("*.py"), *(REPO / "tests").rglob("*.py")]
    editing = [str(p.relative_to(REPO)) for p in scripts if p != Path(__file__) and "sys.path." in p.read_text(encoding="utf-8")]
    assert not editing, f"edit sys.path (import from the installed package, e.g. sparsebench.testing): {editing}"


def test_console_scripts_point_at_functions():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"sparsebench", "sparsebench-tables"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target
