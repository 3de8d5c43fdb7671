"""The help formatter shared by the project's command lines."""

from __future__ import annotations

import argparse

__all__ = ["DefaultsHelpFormatter"]


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after each flag's help, but only where X tells something.

    argparse's own formatter also prints ``(default: None)`` for flags that
    are simply unset and ``(default: False)`` for every on/off switch, which
    is noise, and doubles the default of a flag whose help already states it
    in words.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default:" in (action.help or ""):
            return action.help
        if isinstance(action.default, (list, tuple)) and action.option_strings:
            # As it would be typed ("--input-size 512 512"), not Python's "[512, 512]" or "['cpu']".
            shown = " ".join(str(v) for v in action.default).replace("%", "%%")
            return f"{action.help} (default: {shown})"
        return super()._get_help_string(action)
