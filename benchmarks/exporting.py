"""export-unet in a child process, as the bench-unet commands that need a fresh model run it.

A child, not a call: TensorFlow keeps the memory its graphs and calls used,
and timed rows should not run beside it; and the export is then measured
exactly as a user runs it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["export_command", "run_export"]


def export_command(out: Path, *flags) -> list[str]:
    """``python -m unet_export.cli --out OUT -q FLAGS...`` with this interpreter (flags as strings)."""
    return [sys.executable, "-m", "unet_export.cli", "--out", str(out), "-q", *map(str, flags)]


def run_export(out: Path, *flags, error: type[Exception] = RuntimeError) -> None:
    """Export to ``out`` in a child; a failure raises ``error`` with export-unet's last line."""
    proc = subprocess.run(export_command(out, *flags), capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise error(
            f"exporting {Path(out).name} failed: {lines[-1] if lines else f'exit {proc.returncode}'}"
        )
