"""A tiny Llama causal LM (hidden 32, 2 layers) with a word-level tokenizer, built from a config
(no download), and a few tiny instruction tasks in its vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]
WORDS = ("Definition: Input: Output: copy the word reverse say yes no red blue green cat dog "
         "sun moon one two three four answer").split()


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_llama")
    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six BIG-bench-layout tasks (``<task>/task.json``) of 10 examples each."""
    folder = tmp_path_factory.mktemp("ni_tasks")
    colors, animals = ["red", "blue", "green"], ["cat", "dog", "sun", "moon"]
    words = colors + animals
    for k in range(6):
        name = f"subtask00{k}_toy"
        examples = [{"input": words[(i + k) % len(words)],
                     "target": [words[(i + k) % len(words)], "answer"] if i % 2 else
                     words[(i + k) % len(words)]} for i in range(10)]
        (folder / name).mkdir()
        (folder / name / "task.json").write_text(json.dumps(
            {"name": name, "task_prefix": f"Definition: copy the word {k}", "examples": examples}))
    return folder
