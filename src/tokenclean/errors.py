"""The project's exception types. Every user-facing error names where the problem is."""

from __future__ import annotations


class TokencleanError(Exception):
    """Base class of errors the CLI reports as a one-line message (exit code 2) rather than a traceback."""


class ConfigError(TokencleanError):
    """A configuration key or value is invalid; the message names the dotted key."""


class DataError(TokencleanError):
    """A record of an input file is invalid.

    The message reads ``FILE:LINE: field 'FIELD': what is wrong`` (``FILE[row N]`` where the format
    has no lines), so a person can jump to the problem.
    """

    def __init__(self, location: str, message: str, field: str | None = None) -> None:
        self.location = location
        self.field = field
        self.reason = message
        where = f"{location}: field '{field}': " if field else f"{location}: "
        super().__init__(where + message)


class ModelError(TokencleanError):
    """A model, tokenizer or adapter cannot be loaded or the pair is incompatible."""


class OutputError(TokencleanError):
    """An output cannot be written: foreign, in use, an input, damaged or not writable, or the disk is full."""
