"""The news recommender's networks (torch): news encoder, user encoder, GateFormer's token gate and SFI's
hard selection with fine-grained interaction.

Import this module only where torch is needed; ``flagstone.newsrec`` itself stays light.

- **base**: a small transformer encodes every title (history and candidates) into token states, pooled by
  additive attention into one vector; the user vector is additive attention over the history vectors; the
  score is the dot product of the user and candidate vectors.
- **gateformer**: before the transformer reads a *clicked* (history) title, a cheap gate (word embeddings, a
  width-3 convolution and a linear layer) scores its tokens and only the top ``gate_k`` go in, in their
  original order and with their original positions. The gate trains through a straight-through factor
  ``1 + g - stop_gradient(g)`` (g = sigmoid of the gate score) on the kept tokens' embeddings: the forward
  pass is unchanged and the gate receives the gradient of each kept token's scale.
- **sfi**: per candidate, a cheap selector (mean of its own word embeddings) ranks the history by cosine
  similarity and keeps the top ``select_k`` (hard selection); only those items go through the transformer
  and into a candidate-aware user vector and a fine-grained, token-level interaction (for each candidate
  token, the best cosine with a selected item's tokens, averaged over the candidate's tokens). The selector
  trains on its own auxiliary click loss. With ``select_k`` at least the history length it is the same model
  without selection ("fine-grained, all history").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from flagstone.newsrec.settings import NewsRecConfig

NEG = -1e4  # a large negative logit instead of -inf, so masked softmaxes and their gradients stay finite


class AdditiveAttention(nn.Module):
    """softmax_i(q . tanh(W x_i + b)) weighted sum of x_i over the unmasked i."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.query = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.query(torch.tanh(self.proj(x))).squeeze(-1).masked_fill(~mask, NEG)
        weights = torch.softmax(logits, dim=-1) * mask
        return torch.einsum("...l,...ld->...d", weights, x)


class NewsEncoder(nn.Module):
    """Token ids -> (title vector, token states). Only rows with at least one token may be passed."""

    def __init__(self, vocab_size: int, config: NewsRecConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, config.dim, padding_idx=0)
        self.position = nn.Embedding(config.title_length, config.dim)
        layer = nn.TransformerEncoderLayer(config.dim, config.heads, config.ff_dim, config.dropout,
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        self.pool = AdditiveAttention(config.dim, config.dim)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                token_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = tokens != 0
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        x = self.embed(tokens)
        if token_scale is not None:
            x = x * token_scale.unsqueeze(-1)
        x = x + self.position(positions)
        states = self.norm(self.transformer(x, src_key_padding_mask=~mask))
        return self.pool(states, mask), states, mask


class TokenGate(nn.Module):
    """GateFormer's cheap gate: a score per token from word embeddings and a width-3 convolution."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, padding=1)
        self.score = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(self.embed(tokens).transpose(1, 2))).transpose(1, 2)
        return self.score(h).squeeze(-1).masked_fill(tokens == 0, NEG)


def gate_top_k(tokens: torch.Tensor, logits: torch.Tensor, k: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-``k`` tokens of each row by gate logit, in their original order: (tokens, positions, logits).
    Rows with fewer than ``k`` tokens keep all of them (the rest of their ``k`` slots are padding)."""
    k = min(k, tokens.shape[1])
    top = torch.topk(logits, k, dim=1).indices.sort(dim=1).values
    kept = tokens.gather(1, top)
    return kept, top, logits.gather(1, top)


def select_history(candidates: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor,
                   candidate_mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SFI's hard selection: for each candidate [B, C, d], the ``k`` history items [B, H, d] of highest dot
    product (cosine for unit vectors). Returns (indices [B, C, k'], valid [B, C, k']) with k' = min(k, H);
    a slot is invalid when the user has fewer than k' items or the candidate is padding."""
    relevance = torch.einsum("bcd,bhd->bch", candidates, history)
    relevance = relevance.masked_fill(~history_mask.unsqueeze(1), float("-inf"))
    k = min(k, history.shape[1])
    top = torch.topk(relevance, k, dim=-1).indices
    b, c = candidates.shape[:2]
    valid = history_mask.gather(1, top.reshape(b, c * k)).view(b, c, k) & candidate_mask.unsqueeze(-1)
    return top, valid


@dataclass
class Scores:
    """What one forward pass gives: candidate scores [B, C] (padding candidates hold NEG), the selector's own
    scores for SFI's auxiliary loss (else None), and the encoder work done."""

    scores: torch.Tensor
    selector_scores: torch.Tensor | None
    tokens_encoded: int  # non-padding tokens that went through the transformer
    items_encoded: int  # titles that went through the transformer


class NewsRecModel(nn.Module):
    def __init__(self, vocab_size: int, config: NewsRecConfig) -> None:
        super().__init__()
        self.config = config
        self.news_encoder = NewsEncoder(vocab_size, config)
        if config.kind == "gateformer":
            self.gate = TokenGate(vocab_size, config.gate_dim)
        if config.kind == "sfi":
            self.selector = nn.Embedding(vocab_size, config.dim, padding_idx=0)
            self.user_query = nn.Linear(config.dim, config.dim)
            self.fine_weight = nn.Parameter(torch.tensor(4.0))
            self.selector_scale = nn.Parameter(torch.tensor(10.0))
        else:
            self.user_encoder = AdditiveAttention(config.dim, config.dim)

    # -- encoding only the rows that hold a title, trimmed to their longest title ------------------------------
    def _encode_rows(self, tokens: torch.Tensor, rows: torch.Tensor, gated: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Encode ``tokens[rows]`` ([R, L]); (vectors, states, token mask, tokens encoded)."""
        picked = tokens[rows]
        if picked.shape[0] == 0:
            dim = self.config.dim
            return (picked.new_zeros((0, dim), dtype=torch.float32), picked.new_zeros((0, 1, dim), dtype=torch.float32),
                    picked.new_zeros((0, 1), dtype=torch.bool), 0)
        positions = scale = None
        if gated:
            kept, positions, logits = gate_top_k(picked, self.gate(picked), self.config.gate_k)
            g = torch.sigmoid(logits)
            scale = 1.0 + g - g.detach()  # forward 1, gradient to the gate
            picked = kept
        length = int((picked != 0).sum(dim=1).max())
        if not gated:  # titles are left-aligned: trim the padding columns no row uses
            picked = picked[:, :length]
        vectors, states, mask = self.news_encoder(picked, positions, scale)
        return vectors, states, mask, int(mask.sum())

    def forward(self, history: torch.Tensor, history_mask: torch.Tensor, candidates: torch.Tensor,
                candidate_mask: torch.Tensor) -> Scores:
        """``history`` [B, H, L] and ``candidates`` [B, C, L] token ids with item masks [B, H] / [B, C]."""
        if self.config.kind == "sfi":
            return self._forward_sfi(history, history_mask, candidates, candidate_mask)
        b, h, l = history.shape
        c = candidates.shape[1]
        dim = self.config.dim
        hist_vec = history.new_zeros((b * h, dim), dtype=torch.float32)
        rows = history_mask.reshape(-1)
        vec, _, _, hist_tokens = self._encode_rows(history.reshape(b * h, l), rows, self.config.kind == "gateformer")
        hist_vec = hist_vec.index_put((rows.nonzero().squeeze(1),), vec).view(b, h, dim)
        cand_vec = candidates.new_zeros((b * c, dim), dtype=torch.float32)
        crow = candidate_mask.reshape(-1)
        vec, _, _, cand_tokens = self._encode_rows(candidates.reshape(b * c, l), crow, False)
        cand_vec = cand_vec.index_put((crow.nonzero().squeeze(1),), vec).view(b, c, dim)
        user = self.user_encoder(hist_vec, history_mask)
        scores = torch.einsum("bd,bcd->bc", user, cand_vec).masked_fill(~candidate_mask, NEG)
        return Scores(scores, None, hist_tokens + cand_tokens, int(rows.sum() + crow.sum()))

    def _forward_sfi(self, history: torch.Tensor, history_mask: torch.Tensor, candidates: torch.Tensor,
                     candidate_mask: torch.Tensor) -> Scores:
        b, h, l = history.shape
        c = candidates.shape[1]
        dim = self.config.dim

        def cheap(tokens: torch.Tensor) -> torch.Tensor:  # mean of selector word embeddings, unit length
            mask = (tokens != 0).unsqueeze(-1)
            mean = (self.selector(tokens) * mask).sum(-2) / mask.sum(-2).clamp(min=1)
            return nn.functional.normalize(mean, dim=-1)

        sel_h, sel_c = cheap(history), cheap(candidates)  # [B, H, d], [B, C, d]
        top, chosen = select_history(sel_c.detach(), sel_h.detach(), history_mask, candidate_mask,
                                     self.config.select_k)
        k = top.shape[-1]
        # the union of every candidate's selection: all that is encoded (a sum, since scatter with repeated
        # indices keeps an arbitrary one of the written values)
        needed = torch.zeros(history_mask.shape, dtype=torch.int64).scatter_add_(
            1, top.reshape(b, c * k), chosen.reshape(b, c * k).long()) > 0
        rows = needed.reshape(-1)
        vec, states, tmask, hist_tokens = self._encode_rows(history.reshape(b * h, l), rows, False)
        lh = states.shape[1]
        index = rows.nonzero().squeeze(1)
        hist_vec = history.new_zeros((b * h, dim), dtype=torch.float32).index_put((index,), vec)
        hist_states = history.new_zeros((b * h, lh, dim), dtype=torch.float32).index_put((index,), states)
        hist_tmask = history.new_zeros((b * h, lh), dtype=torch.bool).index_put((index,), tmask)
        crow = candidate_mask.reshape(-1)
        cvec, cstates, cmask, cand_tokens = self._encode_rows(candidates.reshape(b * c, l), crow, False)
        lc = cstates.shape[1]
        cindex = crow.nonzero().squeeze(1)
        cand_vec = candidates.new_zeros((b * c, dim), dtype=torch.float32).index_put((cindex,), cvec).view(b, c, dim)
        cand_states = candidates.new_zeros((b * c, lc, dim), dtype=torch.float32).index_put((cindex,), cstates)
        cand_tmask = candidates.new_zeros((b * c, lc), dtype=torch.bool).index_put((cindex,), cmask)
        # gather each candidate's selected history items
        flat = (top + torch.arange(b, device=top.device).view(b, 1, 1) * h).reshape(-1)
        sel_vec = hist_vec[flat].view(b, c, k, dim)
        sel_states = nn.functional.normalize(hist_states[flat], dim=-1).view(b, c, k, lh, dim)
        sel_tmask = hist_tmask[flat].view(b, c, k, lh)
        # fine-grained interaction: for every candidate token its best match in a selected item's tokens
        cs = nn.functional.normalize(cand_states, dim=-1).view(b, c, lc, dim)
        ctm = cand_tmask.view(b, c, lc)
        sim = torch.einsum("bcid,bckjd->bckij", cs, sel_states).masked_fill(~sel_tmask.unsqueeze(3), -1.0)
        best = sim.max(dim=-1).values  # [B, C, k, Lc]
        match = (best * ctm.unsqueeze(2)).sum(-1) / ctm.sum(-1, keepdim=True).clamp(min=1)  # [B, C, k]
        # candidate-aware user vector over the selected items
        query = self.user_query(cand_vec)  # [B, C, d]
        logits = torch.einsum("bcd,bckd->bck", query, sel_vec) / math.sqrt(dim)
        weights = torch.softmax(logits.masked_fill(~chosen, NEG), dim=-1) * chosen
        user = torch.einsum("bck,bckd->bcd", weights, sel_vec)
        coarse = (user * cand_vec).sum(-1)
        fine = self.fine_weight * (weights * match).sum(-1)
        scores = (coarse + fine).masked_fill(~candidate_mask, NEG)
        # the selector's own click scores (its training signal): mean history vector . candidate vector
        hm = history_mask.unsqueeze(-1)
        user_sel = (sel_h * hm).sum(1) / hm.sum(1).clamp(min=1)
        selector_scores = (self.selector_scale * torch.einsum("bd,bcd->bc", user_sel, sel_c)
                           ).masked_fill(~candidate_mask, NEG)
        return Scores(scores, selector_scores, hist_tokens + cand_tokens, int(rows.sum() + crow.sum()))
