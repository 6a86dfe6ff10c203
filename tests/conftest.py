"""Shared fixtures: a tiny BERT classifier backbone built from a config (no download, ~0.1 s),
and a small separable sentiment task in its vocabulary."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

POSITIVE = ["good", "great", "fine", "nice", "happy"]
NEGATIVE = ["bad", "awful", "poor", "sad", "ugly"]
NEUTRAL = ["the", "movie", "was", "a", "film", "plot", "very", "and"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# One thread, as in simulated clients: two BLAS threads next to another busy process spin-wait
# and run many times slower (SPEC.md).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A folder holding a 2-layer, 32-wide BERT encoder (with dropout) and its tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    words = SPECIAL + POSITIVE + NEGATIVE + NEUTRAL
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37, max_position_embeddings=64,
                        initializer_range=0.1)  # large enough for the task to be learnt fast
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(config).save_pretrained(folder)
    return str(folder)


def sentiment_texts(n: int, seed: int = 0) -> SimpleNamespace:
    """``n`` separable sentences (label 1: two positive words, label 0: two negative ones), in
    the shape :func:`glora.tasks.tokenize.tokenize` reads."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = rng.sample(NEUTRAL, rng.randint(1, 5))
        words += rng.sample(POSITIVE if label else NEGATIVE, 2)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return SimpleNamespace(texts=texts, labels=labels, text_pairs=None, task_type="classification")


@pytest.fixture(scope="session")
def sentiment(tiny_model_dir: str) -> tuple[torch.Tensor, ...]:
    """48 tokenized training sentences of the separable task (max 12 tokens)."""
    from glora.tasks.tokenize import tokenize
    from glora.backbones import load_tokenizer

    return tokenize(load_tokenizer(tiny_model_dir), sentiment_texts(48), max_length=12)
