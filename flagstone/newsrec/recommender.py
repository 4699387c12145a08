"""Training, scoring, evaluating, saving and loading a news recommender (base, GateFormer or SFI).

A saved model is a folder: ``config.json`` (the model's shape and how it was trained), ``vocab.json`` (its
words) and ``model.safetensors``, written through :func:`flagstone._io.atomic_folder`.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flagstone._io import atomic_folder, read_format_json
from flagstone.errors import DataError
from flagstone.newsrec.metrics import NewsRecMetrics, mean_metrics
from flagstone.newsrec.mind import Impression, MindSplit
from flagstone.newsrec.settings import NewsRecConfig, NewsRecTraining
from flagstone.newsrec.text import TokenTable, Vocabulary

if TYPE_CHECKING:
    from flagstone.models.embedder import Embedder
    from flagstone.newsrec.model import NewsRecModel
    from flagstone.training.loop import TrainingResult

FORMAT = "flagstone-newsrec"
VERSION = 1
CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE = "config.json", "vocab.json", "model.safetensors"


@dataclass
class EncoderCost:
    """Encoder work per impression while scoring (no news vectors are cached between impressions)."""

    tokens_encoded: float  # non-padding title tokens through the transformer, per impression
    items_encoded: float  # titles through the transformer, per impression
    ms_per_impression: float  # wall time of scoring, per impression (batches of ``batch_size`` impressions)
    batch_size: int


@dataclass
class NewsRecEvaluation:
    metrics: NewsRecMetrics
    cost: EncoderCost

    def as_dict(self) -> dict:
        return {**self.metrics.as_dict(), **asdict(self.cost)}


@dataclass
class NewsRecTrainingResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0  # (click, negatives) groups in one epoch


class NewsRecommender:
    """A trained news recommender: ``scores(split)`` ranks each impression's candidates for its user."""

    def __init__(self, model: NewsRecModel, vocab: Vocabulary, training: dict | None = None) -> None:
        self.model = model
        self.config: NewsRecConfig = model.config
        self.vocab = vocab
        self.training = training or {}

    # -- building and training ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, train: MindSplit, config: NewsRecConfig = NewsRecConfig(), *, seed: int = 0,
               word_embedder: Embedder | None = None) -> NewsRecommender:
        """An untrained model whose vocabulary is the words of the training split's titles.

        With ``word_embedder`` (e.g. the bundled all-MiniLM-L6-v2) every word of the vocabulary is encoded by it
        and the word embeddings (news encoder, gate, selector) start from those vectors' principal components,
        as NRMS starts from GloVe; otherwise they start random."""
        import torch

        from flagstone.newsrec.model import NewsRecModel

        vocab = Vocabulary.build(item.title for item in train.news.values())
        torch.manual_seed(seed)
        model = NewsRecModel(len(vocab), config)
        recommender = cls(model, vocab)
        if word_embedder is not None:
            recommender._init_words(word_embedder)
        return recommender

    def _init_words(self, embedder: Embedder) -> None:
        import torch

        vectors = embedder.encode(self.vocab.words[2:], show_progress=False).dense.astype(np.float64)
        centred = vectors - vectors.mean(axis=0)
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        tables = [self.model.news_encoder.embed]
        tables += [getattr(self.model, name).embed if name == "gate" else getattr(self.model, name)
                   for name in ("gate", "selector") if hasattr(self.model, name)]
        for table in tables:
            width = table.weight.shape[1]
            if width > components.shape[0]:
                raise DataError(f"word vectors from {embedder.name} have {components.shape[0]} principal components; "
                                f"the model needs {width}")
            projected = centred @ components[:width].T
            projected /= projected.std(axis=0, keepdims=True) + 1e-8  # unit variance, as nn.Embedding starts
            with torch.no_grad():
                table.weight[2:] = torch.from_numpy(projected.astype(np.float32))
        self.training["word_init"] = embedder.name

    def fit(self, train: MindSplit, settings: NewsRecTraining = NewsRecTraining()) -> NewsRecTrainingResult:
        """Train on every click of ``train`` (softmax over the click and ``settings.negatives`` unclicked items of
        the same impression)."""
        import torch

        from flagstone.training.loop import train as train_loop
        from flagstone.training.settings import TrainingConfig

        if not train.labelled:
            raise DataError(f"{train.path or 'the training split'}: impressions have no click labels")
        table = TokenTable(train.news, self.vocab, self.config.title_length)
        samples = training_samples(train.impressions, table, self.config.max_history)
        if not samples:
            raise DataError("no training impression has both a clicked and an unclicked item")
        rng_seed = settings.seed

        def batches_for_epoch(epoch: int) -> list[list[tuple]]:
            rng = np.random.default_rng(rng_seed + epoch)
            order = rng.permutation(len(samples))
            groups = []
            for start in range(0, len(order), settings.batch_size):
                chunk = []
                for i in order[start:start + settings.batch_size]:
                    history, positive, negatives = samples[i]
                    drawn = rng.choice(negatives, size=settings.negatives, replace=len(negatives) < settings.negatives)
                    chunk.append((history, [positive, *drawn.tolist()]))
                groups.append(chunk)
            return groups

        def loss_fn(batch: list[tuple]) -> torch.Tensor:
            inputs = collate(batch, table.tokens, self.config.max_history)
            out = self.model(*inputs)
            target = torch.zeros(len(batch), dtype=torch.long)  # the click is candidate 0
            loss = torch.nn.functional.cross_entropy(out.scores, target)
            if out.selector_scores is not None:
                loss = loss + settings.selector_loss_weight * torch.nn.functional.cross_entropy(out.selector_scores,
                                                                                                target)
            return loss

        config = TrainingConfig(epochs=settings.epochs, learning_rate=settings.learning_rate, max_steps=settings.max_steps,
                                seed=settings.seed, precision="float32", show_progress=settings.show_progress,
                                warmup_ratio=0.05)
        result: TrainingResult = train_loop(self.model, batches_for_epoch, loss_fn, config)
        self.training = {**self.training, **asdict(settings), "steps": result.steps, "samples_per_epoch": len(samples)}
        return NewsRecTrainingResult(result.steps, result.losses, result.seconds, len(samples))

    # -- scoring -----------------------------------------------------------------------------------------------
    def scores(self, split: MindSplit, *, batch_size: int = 16) -> list[np.ndarray]:
        return self._score(split, batch_size)[0]

    def _score(self, split: MindSplit, batch_size: int) -> tuple[list[np.ndarray], EncoderCost]:
        import torch

        table = TokenTable(split.news, self.vocab, self.config.title_length)
        self.model.eval()
        out: list[np.ndarray] = []
        tokens = items = 0
        start = time.perf_counter()
        with torch.inference_mode():
            for first in range(0, len(split.impressions), batch_size):
                chunk = split.impressions[first:first + batch_size]
                rows = [(history_rows(imp, table, self.config.max_history), table.rows(imp.candidates))
                        for imp in chunk]
                result = self.model(*collate(rows, table.tokens, self.config.max_history))
                tokens += result.tokens_encoded
                items += result.items_encoded
                scores = result.scores.numpy()
                out.extend(scores[i, :len(imp.candidates)].astype(np.float64) for i, imp in enumerate(chunk))
        seconds = time.perf_counter() - start
        n = max(1, len(split.impressions))
        return out, EncoderCost(tokens / n, items / n, 1000.0 * seconds / n, batch_size)

    def evaluate(self, split: MindSplit, *, batch_size: int = 16) -> NewsRecEvaluation:
        if not split.labelled:
            raise DataError(f"{split.path or 'the split'}: impressions have no click labels; cannot score them")
        scores, cost = self._score(split, batch_size)
        return NewsRecEvaluation(mean_metrics([imp.labels for imp in split.impressions], scores), cost)

    # -- persistence -------------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        from safetensors.torch import save_file

        with atomic_folder(folder, overwrite=overwrite) as staging:
            (staging / CONFIG_FILE).write_text(json.dumps(
                {"format": FORMAT, "version": VERSION, "model": asdict(self.config), "training": self.training},
                indent=2))
            (staging / VOCAB_FILE).write_text(json.dumps(self.vocab.words))
            save_file({k: v.detach().contiguous() for k, v in self.model.state_dict().items()},
                      str(staging / WEIGHTS_FILE))
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> NewsRecommender:
        from safetensors.torch import load_file

        from flagstone.newsrec.model import NewsRecModel

        root = Path(folder)
        if not (root / CONFIG_FILE).is_file():
            raise DataError(f"{root} is not a news recommender (no {CONFIG_FILE}; make one with flagstone train newsrec)")
        meta = read_format_json(root / CONFIG_FILE, format_name=FORMAT, version=VERSION, what="a news recommender",
                                kind="model")
        try:
            config = NewsRecConfig(**meta["model"])
            words = json.loads((root / VOCAB_FILE).read_text(encoding="utf-8"))
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise DataError(f"{root}: not a readable news recommender ({exc})") from None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError(f"{root / VOCAB_FILE}: expected a JSON list of words")
        model = NewsRecModel(len(words), config)
        if not (root / WEIGHTS_FILE).is_file():
            raise DataError(f"{root}: no {WEIGHTS_FILE}")
        try:
            model.load_state_dict(load_file(str(root / WEIGHTS_FILE)))
        except RuntimeError as exc:
            raise DataError(f"{root / WEIGHTS_FILE}: weights do not fit the saved config "
                            f"({str(exc).splitlines()[0]})") from None
        model.eval()
        return cls(model, Vocabulary(words), meta.get("training") or {})


def history_rows(imp: Impression, table: TokenTable, max_history: int) -> list[int]:
    """The token-table rows of the user's most recent ``max_history`` clicks (oldest first)."""
    return table.rows(imp.history[-max_history:]) if max_history else []


def training_samples(impressions: list[Impression], table: TokenTable, max_history: int
                     ) -> list[tuple[list[int], int, list[int]]]:
    """(history rows, clicked row, unclicked rows) for every click of an impression that has a non-click."""
    samples = []
    for imp in impressions:
        negatives = [table.row[c] for c, y in zip(imp.candidates, imp.labels or ()) if y == 0]
        if not negatives:
            continue
        history = history_rows(imp, table, max_history)
        samples.extend((history, table.row[c], negatives) for c in imp.clicked)
    return samples


def collate(rows: list[tuple[list[int], list[int]]], tokens: np.ndarray, max_history: int):
    """(history tokens [B, H, L], history mask [B, H], candidate tokens [B, C, L], candidate mask [B, C]) with
    H and C the longest history and candidate list of the batch (at least 1)."""
    import torch

    h = max(1, min(max_history, max(len(r[0]) for r in rows)))
    c = max(len(r[1]) for r in rows)
    hist = np.zeros((len(rows), h), dtype=np.int64)
    cand = np.zeros((len(rows), c), dtype=np.int64)
    for i, (history, candidates) in enumerate(rows):
        if history:
            hist[i, :len(history)] = history
        cand[i, :len(candidates)] = candidates
    return (torch.from_numpy(tokens[hist]), torch.from_numpy(hist > 0), torch.from_numpy(tokens[cand]),
            torch.from_numpy(cand > 0))
