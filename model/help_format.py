"""``--help`` that shows each flag's default once, and only where there is one to show."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's ``(default: ...)`` suffix, left off where it says nothing or repeats the help text.

    Not for a required flag or a switch (``store_true``), not for a ``None`` default (the help says
    what leaving the flag out means), and not when the help already says ``(default ...)``.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.default is None
            or action.default is argparse.SUPPRESS
            or action.required
            or action.nargs == 0
            or "(default" in text.lower()
        ):
            return action.help
        return super()._get_help_string(action)


class DefaultsRawDescriptionHelpFormatter(DefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The same defaults, with the description (a module docstring's examples) kept as written."""
