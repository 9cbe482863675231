"""Command-line conventions shared by every tool (torch-free, stdlib only)."""
from __future__ import annotations

import argparse

__all__ = ["DefaultsHelpFormatter"]


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` only where it tells something: not for switches (their help says
    what they turn on or off), not for ``None`` (the help says what is used instead), and
    not twice where the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.nargs == 0 or action.default is None or "%(default)" in text or "default" in text.lower():
            return text
        return super()._get_help_string(action)
