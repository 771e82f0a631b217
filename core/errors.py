"""Errors a user can act on. Each carries one sentence meant to be shown as it is."""


class LabError(Exception):
    """Base class: the message is complete and user-facing (no traceback needed)."""


class ConfigError(LabError):
    """A run spec or an option is invalid."""


class ModelError(LabError):
    """A model could not be found or loaded."""


class DataError(LabError):
    """A domain, probe set or upload is invalid."""


class StoreError(LabError):
    """The database could not be read or written."""


class RunNotFound(LabError):
    """No run with that id."""
