"""Errors that sparsebench reports to users as one clear line."""


class SparsebenchError(Exception):
    """Base class: the message is meant for the user, without a traceback."""


class ConfigError(SparsebenchError, ValueError):
    """A configuration key has a bad value; the message names the key and the allowed values."""


class ModelLoadError(SparsebenchError):
    """A model or tokenizer could not be found, fetched or read."""


class DataError(SparsebenchError):
    """A dataset could not be found or read."""


class SparsityMismatchError(SparsebenchError):
    """The sparsity measured after pruning differs from the target by more than rounding."""


class StoreError(SparsebenchError):
    """The results folder cannot hold result documents (read-only, full, not a folder)."""


class NumericalError(SparsebenchError):
    """Activations or results that are not finite (NaN or inf), e.g. a model overflowing in float16."""
