"""Errors the command line reports as one line, without a traceback."""

from __future__ import annotations

import difflib

__all__ = ["HarnessError", "UsageError", "did_you_mean"]


class HarnessError(Exception):
    """A problem the user can fix; the CLI prints the message and exits with status 2."""


class UsageError(HarnessError, ValueError):
    """A wrong name, option or value."""


def did_you_mean(name: str, known: list[str] | tuple[str, ...], what: str) -> str:
    """``unknown model 'jodi'; did you mean 'jodie'? Known models: ...``"""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
    listing = ", ".join(sorted(known)) or "none installed"
    return f"unknown {what} {name!r}{hint} Known {what}s: {listing}"
