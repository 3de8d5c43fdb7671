"""A palette PNG written band by band: masks of any height in bounded memory.

Pillow encodes a whole image at once; a tiled mask arrives in bands of rows.
The PNG format (ISO/IEC 15948, W3C PNG specification) allows exactly this:
an IHDR chunk, a PLTE palette, then the zlib stream of filtered rows split
over any number of IDAT chunks, then IEND. Each row is written with filter
type 0 (none), which class-id masks compress well with anyway. The file is
written to a temporary name and renamed when complete, as every output of
this package is.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .atomic import temp_path

__all__ = ["PalettePngWriter"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


class PalettePngWriter:
    """Write an 8-bit palette PNG of ``height`` x ``width`` from uint8 row bands; a context manager.

    Leaving the ``with`` block normally renames the finished file into place;
    an exception (or too few rows) removes the temporary file and leaves
    ``path`` as it was.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, palette: np.ndarray):
        self.path, self.width, self.height = Path(path), width, height
        self._tmp = temp_path(self.path)
        self._fh = open(self._tmp, "xb")
        self._zip = zlib.compressobj(6)
        self._rows = 0
        colours = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
        self._fh.write(
            _SIGNATURE
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
            + _chunk(b"PLTE", colours.tobytes())
        )

    def write(self, rows: np.ndarray) -> None:
        """Append rows: uint8 ``(n, width)`` class ids (palette indices)."""
        if rows.ndim != 2 or rows.shape[1] != self.width or rows.dtype != np.uint8:
            raise ValueError(f"rows must be uint8 (n, {self.width}), got {rows.dtype} {rows.shape}")
        if self._rows + len(rows) > self.height:
            raise ValueError(f"{self._rows + len(rows)} rows written to a {self.height}-row image")
        filtered = np.empty((len(rows), self.width + 1), np.uint8)
        filtered[:, 0] = 0  # filter type: none
        filtered[:, 1:] = rows
        data = self._zip.compress(filtered.tobytes())
        if data:
            self._fh.write(_chunk(b"IDAT", data))
        self._rows += len(rows)

    def __enter__(self) -> "PalettePngWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self._rows != self.height:
                    raise ValueError(f"only {self._rows} of {self.height} rows were written")
                self._fh.write(_chunk(b"IDAT", self._zip.flush()) + _chunk(b"IEND", b""))
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._fh.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            if not self._fh.closed:
                self._fh.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
