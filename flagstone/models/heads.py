"""The encoder forward and its heads, one implementation for inference and training.

From a transformer's token states this computes the pooled dense vector, BGE-M3's sparse token weights
(``relu(Linear(hidden, 1))``), SPLADE's vocabulary weights (a masked-LM head's logits, max-pooled) and ColBERT
vectors (``Linear(hidden, dim)`` on every token after the first).
Everything stays a differentiable tensor: :class:`~flagstone.models.embedder.Embedder` turns the outputs
into arrays under ``torch.inference_mode``, training scores them and back-propagates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

POOLINGS = ("cls", "mean", "last_token")


@dataclass
class EncoderOutput:
    """Per-batch outputs of :func:`encoder_forward`; an output not asked for is ``None``.

    ``sparse`` is one weight per token position, zero on padding and special tokens (a repeated token has a
    weight at each position; :func:`sparse_vocab_weights` keeps the largest). ``colbert`` covers positions
    ``1..`` (the first token, CLS, has no vector) with zero vectors on padding; ``colbert_mask`` marks the
    real ones. ``splade`` is a SPLADE model's sparse output, already one weight per vocabulary id.
    """

    dense: torch.Tensor | None = None  # (batch, hidden)
    sparse: torch.Tensor | None = None  # (batch, seq)
    colbert: torch.Tensor | None = None  # (batch, seq - 1, dim)
    colbert_mask: torch.Tensor | None = None  # (batch, seq - 1)
    splade: torch.Tensor | None = None  # (batch, vocab_size)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str, normalize: bool) -> torch.Tensor:
    """One vector per text from token states: CLS (the first position: right padding), mean over real tokens,
    or the last real token (right or left padding: decoder embedders pad on the left)."""
    import torch

    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    elif pooling == "last_token":  # the last real token of each row, wherever the padding is
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.to(torch.long) * (positions + 1)).argmax(dim=1)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    else:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return pooled


def sparse_token_weights(hidden: torch.Tensor, mask: torch.Tensor, input_ids: torch.Tensor,
                         head: torch.nn.Module, special_ids: torch.Tensor) -> torch.Tensor:
    """``relu(head(hidden))`` per token, zero on padding and on ``special_ids`` (CLS, SEP, PAD, ...)."""
    import torch

    # the head may be kept in another dtype than the encoder (training keeps heads in float32)
    weights = torch.relu(head(hidden.to(head.weight.dtype))).squeeze(-1) * mask
    # a comparison against each special id rather than torch.isin: the same result, and ONNX export has no isin
    special = (input_ids.unsqueeze(-1) == special_ids.to(input_ids.device)).any(dim=-1)
    return weights * ~special


def sparse_vocab_weights(token_weights: torch.Tensor, input_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``(batch, vocab_size)`` lexical weights: a token repeated in a text keeps its largest weight.
    Differentiable (training scores with it); inference builds the same rows sparsely."""
    import torch

    vocab = torch.zeros(len(token_weights), vocab_size, dtype=token_weights.dtype, device=token_weights.device)
    return vocab.scatter_reduce(1, input_ids, token_weights, reduce="amax", include_self=True)


def masked_lm_head(masked_lm: torch.nn.Module) -> torch.nn.Module:
    """The head of a Hugging Face masked LM that maps token states to vocabulary logits: BERT's ``cls``,
    RoBERTa / XLM-R's ``lm_head`` (both are ``head(hidden) -> logits`` modules over the base model's states)."""
    import torch

    for name in ("cls", "lm_head"):
        head = getattr(masked_lm, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise ValueError(f"{type(masked_lm).__name__} has no masked-LM head named cls or lm_head (BERT, RoBERTa and "
                     f"XLM-R style masked LMs are supported as SPLADE models)")


def splade_vocab_weights(hidden: torch.Tensor, mask: torch.Tensor, head: torch.nn.Module,
                         special_ids: torch.Tensor) -> torch.Tensor:
    """``(batch, vocab_size)`` SPLADE v2 weights: the max over the text's real positions (every position the
    attention mask keeps, CLS and SEP included, as SPLADE pools) of ``log(1 + relu(logits))``, with the columns of
    ``special_ids`` zeroed, so only vocabulary terms are keys. log1p and relu are monotone, so this takes the max
    of the logits first and applies them to ``(batch, vocab)`` instead of ``(batch, seq, vocab)`` values; and the
    head runs text by text on the real positions only, so no logits of padding are computed or masked (the
    (seq, vocab) logits are what SPLADE costs; masking a padded (batch, seq, vocab) tensor doubles the memory
    traffic)."""
    import torch

    keep = mask.bool()
    best = [head(hidden[row][keep[row]]).amax(dim=0) for row in range(hidden.shape[0])]
    weights = torch.log1p(torch.relu(torch.stack(best)))
    return weights.index_fill(1, special_ids.to(weights.device), 0.0)


def colbert_vectors(hidden: torch.Tensor, mask: torch.Tensor, head: torch.nn.Module,
                    normalize: bool) -> torch.Tensor:
    """ColBERT vectors for every token after the first, zero on padding (unit length when ``normalize``)."""
    import torch

    vecs = head(hidden[:, 1:].to(head.weight.dtype))
    vecs = vecs * mask[:, 1:].unsqueeze(-1).to(vecs.dtype)  # the head's dtype (bfloat16 under autocast)
    if normalize:
        vecs = torch.nn.functional.normalize(vecs, dim=-1)
    return vecs


def apply_heads(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    input_ids: torch.Tensor,
    *,
    pooling: str,
    normalize: bool,
    dense: bool = True,
    sparse_head: torch.nn.Module | None = None,
    colbert_head: torch.nn.Module | None = None,
    special_ids: torch.Tensor | None = None,
    splade_head: torch.nn.Module | None = None,
) -> EncoderOutput:
    """Dense, sparse and ColBERT outputs from token states ``hidden`` (right-padded batch).

    Sparse weights are computed when ``sparse_head`` (M3, per position) or ``splade_head`` (a masked-LM head, per
    vocabulary id) is given (``special_ids`` is then required), ColBERT vectors when ``colbert_head`` is given.
    """
    out = EncoderOutput()
    if dense:
        out.dense = pool(hidden, attention_mask, pooling, normalize)
    if (sparse_head is not None or splade_head is not None) and special_ids is None:
        raise ValueError("sparse weights need special_ids (the tokens that get no weight)")
    if sparse_head is not None and splade_head is not None:
        raise ValueError("give sparse_head (M3) or splade_head, not both")
    if sparse_head is not None:
        out.sparse = sparse_token_weights(hidden, attention_mask, input_ids, sparse_head, special_ids)
    if splade_head is not None:
        out.splade = splade_vocab_weights(hidden, attention_mask, splade_head, special_ids)
    if colbert_head is not None:
        out.colbert = colbert_vectors(hidden, attention_mask, colbert_head, normalize)
        out.colbert_mask = attention_mask[:, 1:]
    return out


def encoder_forward(
    encoder: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    pooling: str,
    normalize: bool,
    dense: bool = True,
    sparse_head: torch.nn.Module | None = None,
    colbert_head: torch.nn.Module | None = None,
    special_ids: torch.Tensor | None = None,
    splade_head: torch.nn.Module | None = None,
) -> EncoderOutput:
    """Run ``encoder`` (a Hugging Face encoder, possibly LoRA-wrapped) on a right-padded batch and apply the
    heads (see :func:`apply_heads`). Inference and training both call this, so they compute the same thing."""
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return apply_heads(hidden, attention_mask, input_ids, pooling=pooling, normalize=normalize, dense=dense,
                       sparse_head=sparse_head, colbert_head=colbert_head, special_ids=special_ids,
                       splade_head=splade_head)
