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
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
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
    loaded = sys.modules.get("FlagEmbedding")
    if loaded is not None:  # stubbed by an earlier call (find_spec refuses a module without a spec)
        root = loaded.__path__[0]
    else:
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


def build_tiny_cross_encoder(folder: Path, *, num_labels: int = 1, seed: int = 0) -> Path:
    """A randomly initialised reranker in bge-reranker's layout: XLM-R sequence classification + tokenizer."""
    import torch
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        XLMRobertaForSequenceClassification,
    )

    source = build_tiny_m3(folder.parent / f"{folder.name}-encoder", seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    config = AutoConfig.from_pretrained(source, num_labels=num_labels)
    torch.manual_seed(seed + 1)
    XLMRobertaForSequenceClassification(config).eval().save_pretrained(folder)
    return folder


def build_tiny_causal_lm(folder: Path, *, chat_template: bool = False, seed: int = 0, context: int = 256) -> Path:
    """A randomly initialised Llama-architecture causal LM (SmolLM2's family) with a small BPE tokenizer
    in which "Yes" and "No" are single tokens; ``context`` is its window in tokens."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from flagstone.corpora import python_docstrings

    folder.mkdir(parents=True, exist_ok=True)
    _, texts = python_docstrings(300)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(texts + ["Yes", "No"] * 50, trainers.BpeTrainer(
        vocab_size=800, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", model_max_length=context)
    if chat_template:
        fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                         pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id,
                         eos_token_id=fast.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


def poison_token(embedder, text: str, others: list[str]) -> None:
    """Set the input embedding of a token that ``text`` has and ``others`` lack to NaN (broken weights), so
    encoding ``text`` yields NaN and encoding ``others`` does not."""
    import torch

    skip = set(embedder.special_token_ids.tolist())
    for other in others:
        skip |= set(embedder.tokenize([other])[0])
    unique = sorted(set(embedder.tokenize([text])[0]) - skip)
    assert unique, f"no token of {text!r} is missing from the other texts"
    with torch.no_grad():
        embedder.model.get_input_embeddings().weight[unique[0]] = float("nan")


def tiny_bert_tokenizer():
    """A WordPiece tokenizer (600 pieces) with BERT's special tokens, trained on the bundled docstrings."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    from flagstone.corpora import python_docstrings

    _, texts = python_docstrings(400)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return BertTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                             unk_token="[UNK]", mask_token="[MASK]", model_max_length=128)


def build_tiny_bert_m3(folder: Path, *, hidden: int = 32, seed: int = 0) -> Path:
    """BGE-M3's layout (encoder + ``sparse_linear.pt`` + ``colbert_linear.pt``) on a BERT encoder, whose tokenizer
    has a [SEP] and no EOS token (what training M3 heads on a BERT base gives)."""
    import torch
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    fast = tiny_bert_tokenizer()
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(fast), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=2 * hidden, max_position_embeddings=128, pad_token_id=fast.pad_token_id)
    BertModel(config, add_pooling_layer=False).eval().save_pretrained(folder)
    sparse = torch.nn.Linear(hidden, 1)
    with torch.no_grad():
        sparse.bias.fill_(1.0)  # most tokens weigh > 0, [SEP] included: what the parity tests need to see
    torch.save(sparse.state_dict(), folder / "sparse_linear.pt")
    torch.save(torch.nn.Linear(hidden, hidden).state_dict(), folder / "colbert_linear.pt")
    return folder


def build_tiny_splade(folder: Path, *, hidden: int = 32, seed: int = 0, extra_vocab: int = 0) -> Path:
    """A randomly initialised BertForMaskedLM (tied word embeddings, as SPLADE checkpoints are) with the tiny
    WordPiece tokenizer; ``extra_vocab`` pads the model's vocabulary past the tokenizer's, as some checkpoints do."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    folder.mkdir(parents=True, exist_ok=True)
    fast = tiny_bert_tokenizer()
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(fast) + extra_vocab, hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=128,
                        pad_token_id=fast.pad_token_id)
    BertForMaskedLM(config).eval().save_pretrained(folder)
    return folder


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_qwen_tokenizer(extra_words: tuple[str, ...] = ()):
    """A small byte-level BPE tokenizer with Qwen's special tokens (pad <|endoftext|>, eos <|im_end|>) and no
    BOS, as Qwen tokenizers have; ``extra_words`` become single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from flagstone.corpora import python_docstrings

    _, texts = python_docstrings(300)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts + list(extra_words) * 50, trainers.BpeTrainer(
        vocab_size=800, special_tokens=QWEN_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=512)


def _tiny_qwen_config(arch: str, tokenizer):
    from transformers import Qwen2Config, Qwen3Config

    config_class = {"qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch]
    return config_class(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                        tie_word_embeddings=True)


def build_tiny_decoder_embedder(folder: Path, *, arch: str = "qwen3", seed: int = 0) -> Path:
    """A randomly initialised Qwen2 or Qwen3 decoder (the base of gte-Qwen2 / Qwen3-Embedding) with a tokenizer."""
    import torch
    from transformers import AutoModel

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_qwen_tokenizer()
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    AutoModel.from_config(_tiny_qwen_config(arch, tokenizer)).eval().save_pretrained(folder)
    return folder


def build_tiny_qwen_lm(folder: Path, *, arch: str = "qwen3", seed: int = 0) -> Path:
    """A randomly initialised Qwen causal LM (Qwen3-Reranker's architecture) where "yes" and "no" are single
    tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_qwen_tokenizer(("yes", "no"))
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(_tiny_qwen_config(arch, tokenizer)).eval().save_pretrained(folder)
    return folder
