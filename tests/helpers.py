"""Builders and oracles shared by the tests."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SCIFACT = SHARED_DATA / "beir" / "scifact"

M3_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def build_tiny_m3(folder: Path, *, hidden: int = 32, colbert_dim: int | None = None, seed: int = 0) -> Path:
    """A randomly initialised checkpoint in BGE-M3's layout: XLM-R encoder + tokenizer + both heads."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    from flagstone.corpora import python_docstrings

    folder.mkdir(parents=True, exist_ok=True)
    _, texts = python_docstrings(400)
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=600, special_tokens=M3_SPECIALS,
                                                            unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=126)
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=len(fast), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=2 * hidden, max_position_embeddings=128, pad_token_id=1,
                              bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    XLMRobertaModel(config, add_pooling_layer=False).eval().save_pretrained(folder)
    sparse = torch.nn.Linear(hidden, 1)
    colbert = torch.nn.Linear(hidden, colbert_dim or hidden)
    torch.save(sparse.state_dict(), folder / "sparse_linear.pt")
    torch.save(colbert.state_dict(), folder / "colbert_linear.pt")
    return folder


def load_flagembedding(module: str, name: str):
    """A class from FlagEmbedding without running its package __init__, which imports decoder-only
    rerankers that do not import under transformers 5. None when FlagEmbedding is not installed."""
    spec = importlib.util.find_spec("FlagEmbedding")
    if spec is None:
        return None
    root = next(iter(spec.submodule_search_locations))
    for pkg, sub in (("FlagEmbedding", ""), ("FlagEmbedding.inference", "/inference")):
        if pkg not in sys.modules:
            stub = types.ModuleType(pkg)
            stub.__path__ = [root + sub]
            sys.modules[pkg] = stub
    return getattr(importlib.import_module(f"FlagEmbedding.{module}"), name)


def load_flagembedding_m3():
    """FlagEmbedding's M3Embedder, the class behind BGEM3FlagModel."""
    return load_flagembedding("inference.embedder.encoder_only.m3", "M3Embedder")
