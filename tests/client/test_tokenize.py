"""Tokenizing once into tensors, and cutting batches to their longest example."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from glora.tasks.tokenize import batch_inputs, tokenize
from glora.backbones import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: str):
    return load_tokenizer(tiny_model_dir)


def texts(texts, labels, pairs=None, task_type="classification"):
    return SimpleNamespace(texts=texts, labels=labels, text_pairs=pairs, task_type=task_type)


def test_single_texts_pad_right_and_truncate(tokenizer):
    ids, mask, labels = tokenize(tokenizer, texts(["good movie", "the film was very very bad"],
                                                  [1, 0]), max_length=6)
    assert ids.shape == mask.shape == (2, 6)
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]  # [CLS] good movie [SEP] [PAD] [PAD]
    assert ids[1, -1] == tokenizer.sep_token_id  # truncated, still closed
    assert labels.dtype == torch.long and labels.tolist() == [1, 0]


def test_pairs_keep_token_types_and_regression_labels_are_float(tokenizer):
    data = tokenize(tokenizer, texts(["good", "bad"], [0.5, 4.0], ["the film", "a plot"],
                                     task_type="regression"), max_length=8)
    ids, mask, types, labels = data
    assert types[0].tolist() == [0, 0, 0, 1, 1, 1, 0, 0]  # [CLS] good [SEP] | the film [SEP]
    assert labels.dtype == torch.float32 and labels.tolist() == [0.5, 4.0]


def test_empty_data_is_refused(tokenizer):
    with pytest.raises(ValueError, match="empty"):
        tokenize(tokenizer, texts([], []), max_length=8)


def test_batch_inputs_drop_padding_no_example_uses(tokenizer):
    data = tokenize(tokenizer, texts(["good", "the film was bad", "nice"], [1, 0, 1]),
                    max_length=10)
    inputs, labels = batch_inputs(data, torch.tensor([0, 2]))
    assert set(inputs) == {"input_ids", "attention_mask"}
    assert inputs["input_ids"].shape == (2, 3) and labels.tolist() == [1, 1]
    inputs, _ = batch_inputs(data, slice(0, 3))
    assert inputs["attention_mask"].shape == (3, 6)
