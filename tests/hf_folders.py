"""Tiny Hugging Face model folders, as users download them, for the `qrt convert DIR` tests:
a random-weight BERT (2 layers, hidden 32) with a WordPiece tokenizer, saved by transformers'
save_pretrained (the transformers layout) or by sentence-transformers' save (modules.json,
1_Pooling, 2_Normalize). Built in about a second; nothing downloaded."""
from __future__ import annotations

from pathlib import Path

WORDS = ("the a of to and in is it that for on was with as be by this are from at or an not cat sat mat "
         "dog ran big red fast hello world sentence model text").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
MAX_POSITIONS = 64
TEXTS = ["The cat sat on the mat.", "hello world", "", "A big red dog ran fast, and the cat sat.",
         "this sentence is about a model of text " * 6,      # longer than max_seq_length: truncated
         "x", "Is it the dog or the cat?"]


def _fast_tokenizer(max_len: int):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", VOCAB.index("[CLS]")), ("[SEP]", VOCAB.index("[SEP]"))])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_len)


def transformers_folder(path: Path, *, seed: int = 0, max_len: int = 48, positions: int = MAX_POSITIONS) -> Path:
    """model.save_pretrained + tokenizer.save_pretrained of a random 2-layer BERT."""
    import torch
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=positions)
    model = BertModel(cfg).eval()
    with torch.no_grad():         # weights far from the init's tiny scale, so pooling modes differ clearly
        for p in model.parameters():
            p.mul_(3.0)
    model.save_pretrained(path)
    _fast_tokenizer(max_len).save_pretrained(path)
    return path


def sentence_transformers_folder(path: Path, *, pooling="mean", normalize: bool = True, seed: int = 0,
                                 max_len: int = 40) -> Path:
    """SentenceTransformer(modules=[Transformer, Pooling(pooling)(, Normalize)]).save(path)."""
    from sentence_transformers import SentenceTransformer, models
    base = transformers_folder(path.with_name(path.name + "-base"), seed=seed, max_len=max_len)
    modules = [models.Transformer(str(base), max_seq_length=max_len), models.Pooling(32, pooling_mode=pooling)]
    if normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(path))
    return path
