"""The encode options that shape dense vectors after the model: Matryoshka truncation is done while encoding;
these check the options and apply the quantisation and the output type, once over all the texts of a call."""
from __future__ import annotations

from typing import Literal

import numpy as np

from flagstone.models.embeddings import Embeddings
from flagstone.models.quantization import PRECISIONS, Precision, quantize_embeddings

OUTPUTS = ("numpy", "torch")


def check_dense_options(*, dense: bool, sparse: bool, colbert: bool, truncate_dim: int | None, dim: int,
                        precision: str, output: str) -> None:
    """The checks of the options that shape dense vectors (``truncate_dim``, ``precision``, ``output``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    shaped = [name for name, used in (("truncate_dim", truncate_dim is not None),
                                      ("precision", precision != "float32"), ("output", output != "numpy")) if used]
    if shaped and (sparse or colbert or not dense):
        raise ValueError(f"{', '.join(shaped)} shape dense vectors only: ask for dense alone (sparse and ColBERT "
                         f"outputs in a separate call)")
    if truncate_dim is not None and not (isinstance(truncate_dim, int) and 1 <= truncate_dim <= dim):
        raise ValueError(f"truncate_dim must be an int between 1 and {dim}, got {truncate_dim!r}")


def finish_dense(embeddings: Embeddings, *, precision: Precision, calibration_embeddings: np.ndarray | None,
                 output: Literal["numpy", "torch"]) -> Embeddings:
    """Quantise the float32 dense vectors of ``embeddings`` and hand them out as NumPy or torch (done once over
    all the texts of a call, so int8 ranges are the same whether one process encoded them or a pool did)."""
    if embeddings.dense is None or (precision == "float32" and output == "numpy"):
        return embeddings
    dense = embeddings.dense
    if precision != "float32":
        dense = quantize_embeddings(dense, precision, calibration_embeddings=calibration_embeddings)
    if output == "torch":
        import torch

        dense = torch.from_numpy(np.ascontiguousarray(dense))
    return Embeddings(dense=dense, sparse=embeddings.sparse, colbert=embeddings.colbert)

