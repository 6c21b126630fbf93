"""User-facing errors.

Anything a user can fix (a bad path, a wrong layer index, a malformed row) raises
:class:`SparekitError`. The CLI prints its message on one line and exits non-zero
without a traceback; library users can catch it. Bugs stay ordinary exceptions.
"""

from __future__ import annotations


class SparekitError(Exception):
    """An error caused by user input: the message says what is wrong and how to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")
