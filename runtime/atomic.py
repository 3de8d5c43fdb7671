"""Write-then-rename, so a crash never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = [
    "atomic_write_bytes",
    "check_writable_target",
    "folder_problem",
    "new_folders",
    "remove_empty",
    "temp_path",
]


def folder_problem(folder: str | os.PathLike, what: str) -> str | None:
    """Why files cannot be written into ``folder`` (created if missing), with the fix; None if they can.

    A missing folder is fine when it can be created: the nearest existing
    folder above it must be a writable folder, not a file.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{what} folder {str(folder)!r} cannot be created: {str(existing)!r} is a file; choose another {what}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{what} folder {str(existing)!r} is not writable; choose another {what} or fix its permissions"
    return None


def check_writable_target(path: str | os.PathLike, what: str, error_type: type[Exception]) -> Path:
    """Fail early (before minutes of work) if ``path`` cannot be written (its folder may be missing).

    Raises ``error_type`` naming the path, the problem and the fix.
    """
    path = Path(path)
    if path.is_dir():
        raise error_type(
            f"{what} {str(path)!r} is a directory; give a file path such as {str(path / 'model.onnx')!r}"
        )
    problem = folder_problem(path.parent, what)
    if problem:
        raise error_type(problem)
    return path


def new_folders(path: str | os.PathLike) -> list[Path]:
    """The folders above ``path`` that do not exist yet, nearest first (what a write there would create)."""
    return [p for p in Path(path).parents if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (nearest first), each only if still empty: undo what a failed write created."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def temp_path(path: str | os.PathLike) -> Path:
    """A hidden temporary name next to ``path`` (same folder, so the final rename is atomic), random
    enough that concurrent writers of the same target never share it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    The temporary file is created with mode 0666, which the kernel masks
    with the process umask, so the finished file has what ``open()`` would
    give it (``mkstemp``'s 0600 would need the umask read, and reading it
    means setting it: not thread-safe). On any exception, KeyboardInterrupt
    included, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    flags = (
        os.O_WRONLY
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_BINARY", 0)
    )
    for _ in range(100):
        tmp = temp_path(path)
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(f"no free temporary name next to {str(path)!r}")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
