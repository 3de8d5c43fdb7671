"""Write-then-rename, so a crash never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "check_writable_target"]


def check_writable_target(path: str | os.PathLike, what: str, error_type: type[Exception]) -> Path:
    """Fail early (before minutes of work) if ``path`` cannot be written.

    Raises ``error_type`` naming the path, the problem and the fix.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise error_type(f"{what} {str(path)!r} is a directory; give a file path such as {str(path / 'model.onnx')!r}")
    if not parent.is_dir():
        raise error_type(f"{what} folder {str(parent)!r} does not exist; create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise error_type(f"{what} folder {str(parent)!r} is not writable; choose another folder or fix its permissions")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    On any exception, KeyboardInterrupt included, the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; the finished file gets what open() would give (0666 & ~umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
