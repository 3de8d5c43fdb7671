"""The one exception family of ``unet_export``.

Every error a user can cause derives from :class:`ExportError`; the CLI
catches that base class, prints its message on one line and exits 1.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ExportError", "ConfigError", "WeightsError", "ConversionError", "VerificationError"]


class ExportError(Exception):
    """Base class of every user-facing export failure."""


class ConfigError(ExportError, ValueError):
    """An option value is not allowed (the message names the value, the rule and the fix)."""


class WeightsError(ExportError):
    """A weights file is missing, unreadable, or does not fit the model."""


class ConversionError(ExportError):
    """tf2onnx or a graph pass produced a graph that fails its checks."""


class VerificationError(ExportError):
    """The ONNX model does not reproduce Keras within the tolerance.

    ``report`` carries every figure measured, so a caller can print or save it.
    """

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report or {}
