"""Errors a user can cause. Each carries a one-line message the CLI prints without a traceback."""
from __future__ import annotations

import importlib.util

class FlagstoneError(Exception):
    """Base class for mistakes in input, files or settings that the user can fix."""


class DataError(FlagstoneError):
    """A data file is missing, malformed or inconsistent."""


class ModelNotFoundError(FlagstoneError):
    """A model name or folder could not be resolved to loadable weights."""


class MissingHeadError(FlagstoneError):
    """A sparse or ColBERT output was asked of a model that has no such head."""


class InvalidTextError(FlagstoneError):
    """A text is empty, not a string, or longer than allowed."""


class InvalidExampleError(InvalidTextError):
    """An in-context example (bge-en-icl style few-shot query) is malformed, or given where none is taken."""


class CacheError(FlagstoneError):
    """The embedding cache directory cannot be used."""


class MissingDependencyError(FlagstoneError):
    """An optional extra needed for this feature is not installed."""


def require_extra(extra: str, modules: tuple[str, ...], feature: str) -> None:
    """Raise MissingDependencyError naming the pip extra (in pyproject.toml) when a module it brings is absent.

    ``modules`` are import names (``faiss``, not ``faiss-cpu``); ``feature`` starts the message, e.g.
    "IVF and HI² indexes need".
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(f"{feature} {', '.join(missing)}: pip install 'flagstone[{extra}]'")


class BackendError(FlagstoneError):
    """An inference backend or precision that does not exist, or a combination a backend does not offer."""


class IdError(FlagstoneError):
    """A document id is duplicated, empty, or not in the index."""


class TuningError(FlagstoneError):
    """A recall target an index cannot serve: it was never tuned, or has nothing to tune on."""


class VectorError(FlagstoneError):
    """Vectors have the wrong shape or contain NaN / infinity."""


class NonFiniteError(FlagstoneError):
    """A model produced, or a caller passed, NaN or infinity where finite numbers are needed (scores, outputs).

    Kept apart from :class:`VectorError` (wrong input vectors) because the usual cause is numerical: a model
    run in float16 / bfloat16 that overflows, or broken weights."""


class FlagstoneWarning(UserWarning):
    """Something in the data the user should know about that does not stop the work (the CLI prints one line)."""


class LossyPrecisionWarning(FlagstoneWarning):
    """A precision whose outputs differ from float32 by more than rounding (onnx int8)."""


class EmptyDocumentsWarning(FlagstoneWarning):
    """A corpus holds documents without text; they are indexed as the empty text."""


class NotFittedError(FlagstoneError):
    """A model or index was asked to work before it was fitted or given any documents."""


class IndexFormatError(DataError):
    """A folder is not a Flagstone index, is from an unsupported version, or its manifest is malformed."""


class CorruptIndexError(IndexFormatError):
    """An index file does not match its manifest: missing, truncated, a bad .npy header or a checksum mismatch."""
