"""Typed errors. The CLI prints ``str(err)`` as one line and exits non-zero."""


class PhiflashError(Exception):
    """Base class for every error phiflash reports to a user."""


class ModelLoadError(PhiflashError):
    """A model directory or file cannot be loaded (missing, corrupt, wrong layout)."""


class WrongArchitectureError(ModelLoadError):
    """The checkpoint is not a phi4flash / SambaY model."""


class InvalidParamsError(PhiflashError):
    """A generation setting or prompt is out of range (``GenerationParams.validate``)."""


class ContextLengthError(PhiflashError):
    """The prompt (plus the requested tokens) does not fit the context."""


class PromptCacheError(PhiflashError):
    """A saved prompt cache cannot be reused for this prompt."""


class ConversionError(PhiflashError):
    """A conversion cannot be done (bad flags, existing or unwritable output, quantizer failure)."""
