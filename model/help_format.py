"""``--help`` that shows each flag's default once, only where there is one to show, as it is typed."""

from __future__ import annotations

import argparse


def shown_default(action: argparse.Action) -> str:
    """A default as a user would type it: a comma-separated flag's list as ``1,4,16``, a many-valued
    one's (``nargs='+'``) as ``fp32 bf16``, not Python's ``[1, 4, 16]``."""
    value = action.default
    if isinstance(value, list | tuple):
        return (" " if action.nargs in ("+", "*") else ",").join(str(v) for v in value)
    return str(value)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's ``(default: ...)`` suffix, left off where it says nothing or repeats the help text.

    Not for a required flag or a switch (``store_true``), not for a ``None`` or empty default (the help
    says what leaving the flag out means), and not when the help already says ``(default ...)``.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.default is None
            or action.default is argparse.SUPPRESS
            or action.default in ("", [], ())
            or action.required
            or action.nargs == 0
            or "(default" in text.lower()
        ):
            return action.help
        # argparse %-formats the help text: a literal % in the default must not start a conversion.
        return f"{text} (default: {shown_default(action).replace('%', '%%')})"


class DefaultsRawDescriptionHelpFormatter(DefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The same defaults, with the description (a module docstring's examples) kept as written."""
