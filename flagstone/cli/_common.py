"""Helpers shared by the CLI's command groups: texts, embedder/cache/retriever from args, option groups."""
from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from flagstone.errors import DataError, FlagstoneError

EPILOG = "Models: a local folder, a hub name (BAAI/bge-m3) or a preset (see `flagstone models`)."
# the Retriever's modes, spelled out so that building the parser imports no numpy (a test keeps them equal)
MODES = ("dense", "sparse", "colbert", "bm25", "hybrid")
# the inference backends and precisions (flagstone.models.backends), spelled out for the same reason
BACKENDS = ("torch", "onnx", "openvino")
PRECISIONS = ("float32", "bfloat16", "int8")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a parser error is one line on stderr (argparse adds a usage block) naming the help to read.

    Subparsers inherit the class, so every command reports its mistakes the same way.
    """

    def error(self, message: str) -> NoReturn:
        flat = " ".join(message.split())
        self.exit(2, f"flagstone: error: {flat} (see {self.prog} --help)\n")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._nested: dict[str, argparse.ArgumentParser] = {}

    def add_nested_command(self, name: str, **kwargs) -> ArgumentParser:
        """A sub-command beside this parser's own positional arguments (``eval newsrec DATA`` beside ``eval DATA``,
        which argparse's subparsers cannot express): when the first argument is ``name``, the rest is parsed by
        the returned parser alone. ``kwargs`` are ArgumentParser's."""
        kwargs.setdefault("prog", f"{self.prog} {name}")
        parser = type(self)(**kwargs)
        self._nested[name] = parser
        return parser

    def parse_known_args(self, args=None, namespace=None):
        if args and args[0] in self._nested:
            return self._nested[args[0]].parse_known_args(list(args[1:]), namespace)
        return super().parse_known_args(args, namespace)


# -- argparse types: a bad value is a parser error (exit 2, one line) before any work starts ------------------
def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def probability(text: str) -> float:
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def recall_target(text: str) -> float:
    value = _float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a recall target must be in (0, 1], got {text}")
    return value


def port(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port must be between 1 and 65535, got {value}")
    return value


def existing_file(text: str) -> str:
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"file not found: {text}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    return text


def existing_folder(text: str) -> str:
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"folder not found: {text}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return text


def existing_path(text: str) -> str:
    """A file or a folder that exists (inputs that may be either, e.g. a BEIR folder or a .jsonl file)."""
    if not Path(text).expanduser().exists():
        raise argparse.ArgumentTypeError(f"not found: {text}")
    return text


def _check_parents(path: Path, text: str) -> None:
    """The nearest existing ancestor must be a folder, or the output could never be created."""
    from flagstone._io import file_in_the_way

    blocker = file_in_the_way(path)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {blocker} is a file, not a folder")


def output_file(text: str) -> str:
    """A file to write: not a folder, and its folder exists or can be created. Existing files are checked
    against --overwrite by the command, which knows whether it has that flag."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    _check_parents(path, text)
    return text


def output_folder(text: str) -> str:
    """A folder to write into: an existing folder, or a path that can be created (not a file)."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    _check_parents(path, text)
    return text


def http_url(text: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL starting with http:// or https://")
    return text


# a hub name as huggingface_hub accepts it: org/name, one slash, no leading dot, slash or tilde (those are paths)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")


def model_name(text: str) -> str:
    """An embedding or cross-encoder model: a model folder, a preset or a plausible hub name. Checked without
    the network and without loading anything; a hub name that does not exist fails when it is fetched."""
    from flagstone.models.presets import PRESETS, find_preset

    path = Path(text).expanduser()
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "modules.json").is_file()):
            raise argparse.ArgumentTypeError(f"{text} is a folder but has no config.json (nor adapter_config.json): "
                                             "not a model folder or LoRA adapter folder")
        return text
    if find_preset(text) is not None or _HUB_ID.fullmatch(text):
        return text
    raise argparse.ArgumentTypeError(f"unknown model {text!r}: not a folder, not a hub name (org/name), not a "
                                     f"preset ({', '.join(sorted(PRESETS))})")


def causal_lm_name(text: str) -> str:
    """A generator / causal LM: the bundled default, a model folder, a LoRA adapter folder (what
    ``flagstone train long-context`` and ``flagstone train inters`` write), a .gguf file or a plausible hub name."""
    from flagstone.models.causal_lm import DEFAULT_LLM, is_adapter_folder

    path = Path(text).expanduser()
    if text.lower() == DEFAULT_LLM or (path.is_file() and path.suffix == ".gguf"):
        return text
    if path.is_dir():
        if not (path / "config.json").is_file() and not is_adapter_folder(path):
            raise argparse.ArgumentTypeError(f"{text} is a folder but has no config.json (nor adapter_config.json): "
                                             "not a model folder or LoRA adapter folder")
        return text
    if _HUB_ID.fullmatch(text):
        return text
    raise argparse.ArgumentTypeError(f"unknown causal LM {text!r}: not {DEFAULT_LLM}, a folder, a .gguf file or "
                                     "org/name")


def reranker_spec(text: str) -> str:
    """'llm', 'llm:CAUSAL_LM' or a cross-encoder model."""
    if text == "llm":
        return text
    if text.startswith("llm:"):
        causal_lm_name(text[4:])
        return text
    return model_name(text)


def hybrid_weights(text: str) -> dict[str, float]:
    """``SIGNAL=W,...`` into a dict; unknown signals, negative or all-zero weights are rejected here."""
    from flagstone.retrieval.fusion import SIGNALS, check_weights

    weights: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"bad entry {part!r}: expected SIGNAL=NUMBER, e.g. dense=0.3,bm25=0.7")
        weights[name.strip()] = number
    try:
        check_weights(weights, SIGNALS)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return weights


def check_argument(option: str, value: str, check: Callable[[str], object]) -> None:
    """An argparse type check for a value whose rule depends on another argument (so no ``type=``)."""
    try:
        check(value)
    except argparse.ArgumentTypeError as exc:
        raise FlagstoneError(f"argument {option}: {exc}") from None


def check_with(parser: argparse.ArgumentParser, check: Callable[[argparse.Namespace], None]) -> None:
    """Register ``check(args)``: main() runs it after parsing and before the command, for the mistakes that
    need several arguments together (an existing output without --overwrite, a URL to probe)."""
    parser.set_defaults(_check=check)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", type=model_name, default=None,
                   help="embedding model (default: the bundled all-MiniLM-L6-v2)")
    g.add_argument("--max-length", type=positive_int, default=None, help="max tokens per text (default: the model's)")
    g.add_argument("--splade", action="store_true",
                   help="read --model (a masked-LM folder or hub name) as a SPLADE sparse encoder: sparse output only, "
                        "max-pooled log(1 + relu(MLM logits)); SPLADE presets need no flag")
    g.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass (default: 32)")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="torch weight type (torch backend only; --precision is the backend-independent knob): "
                        "bfloat16 weights are faster on CPUs with AVX-512 BF16, vectors differ slightly "
                        "(default: float32)")
    add_backend_options(g)
    g.add_argument("--cache-dir", type=output_folder, default=None,
                   help="embedding cache folder (default: $FLAGSTONE_CACHE or ~/.cache/flagstone)")
    g.add_argument("--no-cache", action="store_true", help="always re-encode documents")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_probe_options(p: argparse.ArgumentParser, *, tunes: str) -> None:
    """``--n-probe`` and ``--target-recall`` (one or the other) for IVF and HI² indexes; ``tunes`` says what
    the target is measured on."""
    g = p.add_argument_group("approximate search (ivf, hi2)").add_mutually_exclusive_group()
    g.add_argument("--n-probe", type=positive_int, default=None,
                   help="clusters probed per query (default: the index's own, tuned when it was built)")
    g.add_argument("--target-recall", type=recall_target, default=None, metavar="R",
                   help=f"probe the fewest clusters reaching recall@10 >= R against exact search, {tunes}")


def _apply_probe_options(index, args: argparse.Namespace, tune_queries: Callable[[], Sequence[str]] | None,
                         tune: Callable[[Sequence[str], float], dict] | None = None) -> dict | None:
    """Set ``index``'s n_probe from ``--n-probe``, or from ``--target-recall``: tuned on ``tune_queries()``
    through ``tune`` when given, else read from the index's saved tuning. Returns the tuning used, if any."""
    from flagstone.index.ivf import IVFIndex

    if args.n_probe is None and args.target_recall is None:
        return None
    if not isinstance(index, IVFIndex):
        raise FlagstoneError("--n-probe and --target-recall apply to ivf and hi2 indexes (flat search is exact)")
    if args.n_probe is not None:
        index.n_probe = args.n_probe
        return None
    if tune is not None and tune_queries is not None:
        return tune(tune_queries(), args.target_recall)
    index.n_probe = index.n_probe_for(args.target_recall)
    return {"target_recall": args.target_recall, "n_probe": index.n_probe}


def _add_hybrid_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hybrid")
    g.add_argument("--weights", type=hybrid_weights, default=None, metavar="SIGNAL=W,...",
                   help="hybrid weights, e.g. dense=0.3,bm25=0.7; none negative, not all zero (default: depends "
                        "on the model's heads)")
    g.add_argument("--fusion", choices=("weighted", "rrf"), default="weighted",
                   help="weighted sum of normalised scores, or reciprocal-rank fusion (default: weighted)")
    g.add_argument("--normalize", choices=("minmax", "zscore", "none"), default="minmax",
                   help="score normalisation before a weighted sum (default: minmax)")


def add_backend_options(g: argparse._ActionsContainer, *, backend: str = "torch") -> None:
    """--backend and --precision, for every command that builds an embedder (and its cross-encoder)."""
    g.add_argument("--backend", choices=BACKENDS, default=backend,
                   help="inference backend: torch, or a model exported once to ONNX Runtime or OpenVINO and "
                        f"cached under the cache folder's exports/ (default: {backend})")
    g.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="float32 (every backend, vectors equal to torch's to 1e-5), bfloat16 (torch, openvino: "
                        "faster, vectors differ slightly) or int8 (onnx: weights quantised, vectors differ more; "
                        "see the README's backend table) (default: float32)")


def _embedder(args: argparse.Namespace):
    from flagstone.models.embedder import Embedder
    from flagstone.models.presets import DEFAULT_MODEL

    return Embedder(args.model or DEFAULT_MODEL, max_length=args.max_length, batch_size=args.batch_size,
                    dtype=args.dtype, backend=args.backend, precision=args.precision, show_progress=not args.quiet,
                    splade=True if args.splade else None)


def _add_cache_options(p: argparse.ArgumentParser) -> None:
    """The cache options alone, for commands without the full model group."""
    p.add_argument("--cache-dir", type=output_folder, default=None,
                   help="embedding cache folder (default: $FLAGSTONE_CACHE or ~/.cache/flagstone)")
    p.add_argument("--no-cache", action="store_true", help="always re-encode documents")


def _check_output_file(path: str, *, overwrite: bool, example: str) -> None:
    """Before any work: the output file must not be a folder, nor exist unless ``--overwrite`` was given."""
    from flagstone.errors import DataError

    out = Path(path)
    if out.is_dir():
        raise DataError(f"output {path} is a folder; give a file name such as {example}")
    if out.exists() and not overwrite:
        raise DataError(f"output {path} already exists; pass --overwrite to replace it")


def _cache(args: argparse.Namespace):
    if args.no_cache:
        return None
    from flagstone.models.cache import EmbeddingCache

    return EmbeddingCache(Path(args.cache_dir) / "embeddings" if args.cache_dir else None)


def _hybrid(args: argparse.Namespace):
    from flagstone.retrieval.retriever import HybridConfig

    # --weights arrives parsed and checked (hybrid_weights)
    return HybridConfig(weights=args.weights, method=args.fusion, normalize=args.normalize)


def _retriever(args: argparse.Namespace, modes: Sequence[str] | None = None, dense_index: str = "flat"):
    from flagstone.retrieval.retriever import Retriever

    needs_model = modes is None or any(m != "bm25" for m in modes)
    embedder = _embedder(args) if needs_model else None
    signals = None
    if modes is not None:
        signals = sorted({m for m in modes if m != "hybrid"}, key=("dense", "sparse", "colbert", "bm25").index)
        if "hybrid" in modes and len(signals) < 2:
            signals = None  # hybrid alone: use every signal the model has, plus BM25
    return Retriever(embedder, signals=signals, cache=_cache(args), hybrid=_hybrid(args) if "weights" in args else None,
                     dense_index=dense_index)


def _read_texts(path: str) -> tuple[list[str], list[str]]:
    """(ids, texts) from a BEIR folder, a JSONL file or a plain text file."""
    from flagstone._io import iter_jsonl, read_text, require_file
    from flagstone.evaluation.beir import load_corpus, warn_empty_documents

    p = Path(path)
    if p.is_dir():
        return load_corpus(p / "corpus.jsonl")
    require_file(p, "input file")
    if p.suffix == ".jsonl":
        ids, texts = [], []
        for line_no, row in iter_jsonl(p):
            text = row.get("text")
            title = row.get("title") or ""
            if not isinstance(text, str) or not isinstance(title, str):
                raise DataError(f"{p}:{line_no}: needs a string field 'text' (and 'title', if any, a string)")
            ids.append(str(row.get("_id", row.get("id", line_no))))
            texts.append(f"{title} {text}".strip())
        if len(set(ids)) != len(ids):
            raise DataError(f"{p}: document ids are not unique")
        warn_empty_documents([i for i, t in zip(ids, texts) if not t], p)
    else:
        lines = read_text(p, "input file").splitlines()
        ids = [str(i) for i, line in enumerate(lines, 1) if line.strip()]
        texts = [line for line in lines if line.strip()]
    if not texts:
        raise DataError(f"{p}: no texts found (the file is empty)")
    return ids, texts


def _snippet(text: str, width: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
