"""Quantised embeddings, defined as sentence-transformers defines them (``quantize_embeddings``).

* ``int8`` / ``uint8``: each dimension's range ``[min, max]`` (from calibration embeddings, by default the
  embeddings themselves) is cut into 255 equal steps; a value becomes ``floor((x - min) / step)`` clipped to
  0..255, shifted by -128 for int8. A dimension whose range is empty uses a step of 1.
* ``binary`` / ``ubinary``: one bit per dimension (``x > 0``), packed 8 to a byte with ``np.packbits``
  (most significant bit first); binary shifts the byte by -128 into int8.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = ("float32", "int8", "uint8", "binary", "ubinary")


def quantization_ranges(embeddings: np.ndarray) -> np.ndarray:
    """``(2, dim)`` per-dimension minimum and maximum of calibration embeddings (the int8/uint8 buckets)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError("int8/uint8 ranges need at least two calibration embeddings (an (n, dim) array, n >= 2); "
                         "pass calibration_embeddings or ranges")
    return np.stack([embeddings.min(axis=0), embeddings.max(axis=0)])


def quantize_embeddings(embeddings: np.ndarray, precision: Precision, *, ranges: np.ndarray | None = None,
                        calibration_embeddings: np.ndarray | None = None) -> np.ndarray:
    """``(n, dim)`` float embeddings at ``precision``: float32 as is, int8/uint8 ``(n, dim)``, binary/ubinary
    ``(n, ceil(dim / 8))``. int8/uint8 use ``ranges`` if given, else the ranges of ``calibration_embeddings``,
    else those of ``embeddings`` (which then needs two rows or more)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    embeddings = np.asarray(embeddings)
    if embeddings.dtype.kind not in "f":
        raise ValueError(f"quantize float embeddings, not {embeddings.dtype}")
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(embeddings > 0, axis=-1)
        # uint8 arithmetic wraps, so shift in a wider type and narrow afterwards
        return packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    if ranges is None:
        ranges = quantization_ranges(embeddings if calibration_embeddings is None else calibration_embeddings)
    ranges = np.asarray(ranges, dtype=np.float32)
    if ranges.shape != (2, embeddings.shape[-1]):
        raise ValueError(f"ranges must have shape (2, {embeddings.shape[-1]}), got {ranges.shape}")
    low = ranges[0]
    step = (ranges[1] - low) / 255
    step = np.where(step == 0, 1, step)  # a constant dimension: every value falls in bucket 0
    buckets = np.clip(np.floor((embeddings - low) / step), 0, 255)
    return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
