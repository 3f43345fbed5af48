"""Errors a user can cause. Each message names the thing that is wrong and how to fix it."""


class VoraError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class CatalogError(VoraError):
    """A catalog file is missing, unparsable or invalid."""


class DataError(VoraError):
    """Input data is unusable (missing column, unreadable file, ...)."""


class ModelError(VoraError):
    """A model directory or model config is missing or invalid."""


class StageError(VoraError):
    """A stage cannot run (missing upstream output, unit failures, ...)."""
