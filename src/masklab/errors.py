"""User-facing errors.

Every mistake a user can make (bad config key, unreadable file, label out of range, wrong checkpoint)
raises a :class:`MasklabError` subclass whose message is one line naming the file, key or value and
what was expected. The CLI prints that line and exits non-zero; nothing else should reach the user as
a traceback. ``assert`` is reserved for internal invariants.
"""

from __future__ import annotations


class MasklabError(Exception):
    """Base class of every error caused by user input. ``str(err)`` is a single line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")).strip())


class ConfigError(MasklabError):
    """A config file, key or value is wrong (unknown key, wrong type, missing file, bad override)."""


class DataError(MasklabError):
    """A dataset file is missing, unreadable or inconsistent (bad image, label out of range, bad JSON)."""


class CheckpointError(MasklabError):
    """A checkpoint is missing, torn, or does not fit the model."""


class ModelError(MasklabError):
    """A model was configured inconsistently (e.g. an attribute head without its no-object slot)."""


class TrainingError(MasklabError):
    """Training cannot go on (non-finite loss, non-finite matching cost, ...)."""
