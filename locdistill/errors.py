"""User-facing errors.

Every mistake a user can make (bad config key, missing file, corrupt image, wrong
checkpoint, ...) raises a subclass of :class:`LocDistillError` whose message names
the offending file or key and says how to fix it. The CLI prints these without a
traceback and exits with status 2.
"""


class LocDistillError(Exception):
    """Base class of errors caused by user input; the message is shown as is."""


class ConfigError(LocDistillError, ValueError):
    """Unknown config name, unknown key, or a value of the wrong type."""


class DatasetError(LocDistillError):
    """Missing/unreadable dataset files, invalid annotations, corrupt images."""


class CheckpointError(LocDistillError):
    """A checkpoint that cannot be read or does not match the model."""


class TrainingError(LocDistillError):
    """Training stopped for a reason the user must act on (e.g. a non-finite loss)."""
