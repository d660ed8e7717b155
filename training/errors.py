"""The training side's errors. The CLI prints their message as one line and exits non-zero."""

from __future__ import annotations


class TrainingError(Exception):
    """A problem the user can fix (bad data, bad arguments, a missing directory); the message says what."""


class DataError(TrainingError):
    """An MNIST file is missing, truncated, of the wrong format or fails its checksum."""


class ExportError(TrainingError):
    """A model could not be exported or an exported version could not be read."""
