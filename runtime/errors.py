"""The one exception family of ``unet_runtime``.

Applications catch :class:`RuntimeErrorBase` (alias ``SegmenterError``) to
handle everything this package raises on purpose; the CLI turns it into one
line on stderr and exit code 1.
"""

from __future__ import annotations

__all__ = [
    "SegmenterError",
    "ModelFileError",
    "InputImageError",
    "ProviderError",
    "SegmenterClosedError",
]


class SegmenterError(Exception):
    """Base class of every user-facing runtime failure."""


class ModelFileError(SegmenterError):
    """The model file is missing, unreadable, unsafe, or not this network."""


class InputImageError(SegmenterError, ValueError):
    """An image (or batch) does not have an allowed dtype, rank, size or value."""


class ProviderError(SegmenterError):
    """A requested execution provider cannot be used (raised in strict mode)."""


class SegmenterClosedError(SegmenterError):
    """``predict`` was called on a closed :class:`~unet_runtime.Segmenter`."""
