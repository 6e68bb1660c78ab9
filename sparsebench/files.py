"""Files other people read: written whole or not at all, with the permissions the umask asks for.

``tempfile.mkstemp`` creates files readable by their owner only (0600); a result document or a
cached tensor renamed from such a file would stay unreadable to the rest of a group sharing the
results folder. ``atomic_write`` gives the file the mode ``open()`` would (0666 less the umask)
before renaming it into place.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, hence the /proc path first)
    os.umask(mask)
    return mask


def shared_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: 0666 less the umask."""
    return 0o666 & ~current_umask()


def share_folder(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes ``mkdir()`` and ``open()`` would (0777 / 0666 less
    the umask): ``tempfile.mkdtemp`` makes 0700 folders and ``safetensors``' ``save_file`` 0600 files."""
    folder = Path(folder)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o777 & ~current_umask() if path.is_dir() else shared_mode())


def partial_file(folder: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """``mkstemp`` in ``folder``, with the umask's mode instead of 0600."""
    handle, partial = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
    os.fchmod(handle, shared_mode())
    return handle, partial


def atomic_write(path: Path, text: str, partial_prefix: str | None = None) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = partial_file(path.parent, partial_prefix or f".{path.stem}-", ".partial")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def sha256_of(path: Path) -> str:
    """The file's sha256 (hex), read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
