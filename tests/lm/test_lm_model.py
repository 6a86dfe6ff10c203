"""Causal-LM clients: answer-only loss masking, the training contract, generation cap, ROUGE-L."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from glora.backbones import load_tokenizer
from glora.contract import TrainTask
from glora.tasks.generation import evaluate_generation, generate, per_task_rouge, rouge_l
from glora.tasks.prompts import IGNORE_INDEX, encode_prompts, encode_training, format_prompt
from glora.training.cache import ModelCache
from glora.training.train import train_client


@pytest.fixture(scope="module")
def cache(tiny_lm_dir):
    return ModelCache(tiny_lm_dir, target_modules=["q_proj", "v_proj"], alpha=8.0,
                      task="causal_lm")


@pytest.fixture(scope="module")
def tok(tiny_lm_dir):
    return load_tokenizer(tiny_lm_dir, pad=True)


def test_labels_cover_exactly_the_answer_tokens(tok):
    prompts = [format_prompt(tok, "copy the word", "red"), format_prompt(tok, "say yes", "cat dog")]
    answers = ["red", "yes no yes"]
    ids, mask, labels = encode_training(tok, prompts, answers, max_length=16)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        a_ids = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(p_ids) + len(a_ids)
        assert ids[i, :n].tolist() == p_ids + a_ids and mask[i].sum() == n
        assert (labels[i, :len(p_ids)] == IGNORE_INDEX).all()
        assert labels[i, len(p_ids):n].tolist() == a_ids
        assert (labels[i, n:] == IGNORE_INDEX).all() and (mask[i, n:] == 0).all()


def test_truncation_keeps_the_answer_and_the_prompt_end(tok):
    prompt = format_prompt(tok, "copy " * 30, "red")
    ids, mask, labels = encode_training(tok, [prompt], ["blue green"], max_length=8)
    assert mask.sum() == 8
    answer = tok("blue green", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert labels[0][labels[0] != IGNORE_INDEX].tolist() == answer
    assert tok.decode(ids[0, :8 - len(answer)]).split()[-3:] == ["Input:", "red", "Output:"]


def test_masked_loss_equals_the_answer_only_loss(cache, tok):
    ids, mask, labels = encode_training(tok, [format_prompt(tok, "copy the word", "red")],
                                        ["red"], max_length=16)
    model = cache.global_model({}, {})
    with torch.no_grad():
        n = int(mask.sum())
        out = model(input_ids=ids[:, :n], attention_mask=mask[:, :n], labels=labels[:, :n])
        logp = out.logits[0, :-1].log_softmax(-1)
        target = ids[0, 1:n]
        answer = (labels[0, 1:n] != IGNORE_INDEX)
        manual = -logp[torch.arange(n - 1)[answer], target[answer]].mean()
    assert torch.allclose(out.loss, manual, atol=1e-6)


def task_for(tok, rank=4, steps=6, client=0, **kw):
    prompts = [format_prompt(tok, "copy the word", w) for w in ["red", "blue", "cat", "dog"]]
    data = encode_training(tok, prompts, ["red", "blue", "cat", "dog"], max_length=16)
    return TrainTask(client_id=client, round=0, rank=rank, seed=1, adapter=None, init_seed=5,
                     head=None, base={}, frozen=(), data=data, steps=steps, batch_size=2,
                     lr=1e-2, **kw)


def test_cache_has_the_classifier_cache_interface_and_no_head(cache):
    assert len(cache.layers) == 4 and all(k.endswith(("q_proj", "v_proj")) for k in cache.layers)
    ad = cache.adapter(4)
    assert ad.head == {} and cache.head_init == {}
    assert set(ad.lora) == {k + s for k in cache.layers for s in (".lora_A.weight",
                                                                   ".lora_B.weight")}


def test_train_client_is_deterministic_and_learns(cache, tok):
    task = task_for(tok, steps=12)
    a, b = train_client(cache, task), train_client(cache, task)
    assert a.head == {} and a.num_examples == 4
    assert all(torch.equal(a.adapter[k], b.adapter[k]) for k in a.adapter)
    assert any(v.abs().sum() > 0 for k, v in a.adapter.items() if k.endswith("lora_B.weight"))
    first = train_client(cache, dataclasses.replace(task, steps=1)).train_loss
    assert a.train_loss < first


def test_worker_hook_trains_causal_lm(tiny_lm_dir, tok):
    from glora.sim import workers

    spec = {"task": "causal_lm", "model": tiny_lm_dir, "target_modules": ["q_proj", "v_proj"],
            "alpha": 8.0, "max_rank": 4}
    with workers.ClientExecutor(spec, 1) as run:
        (res,) = run([task_for(tok)])
    assert res.head == {} and len(res.adapter) == 8


def test_generation_stops_at_the_cap(cache, tok):
    prompts = encode_prompts(tok, [format_prompt(tok, "copy the word", w) for w in
                                   ["red", "blue green", "cat"]], max_length=16)
    model = cache.global_model({}, {})
    for cap in (1, 3, 7):
        out = generate(model, prompts, cap, tok.pad_token_id, eos_id=None, batch_size=2)
        assert len(out) == 3 and all(len(r) == cap for r in out)
    with_eos = generate(model, prompts, 5, tok.pad_token_id, tok.eos_token_id)
    assert all(len(r) <= 5 and tok.eos_token_id not in r for r in with_eos)


def test_left_padded_generation_matches_one_by_one(cache, tok):
    texts = [format_prompt(tok, "copy the word", w) for w in ["red", "blue green cat", "dog"]]
    model = cache.global_model({}, {})
    together = generate(model, encode_prompts(tok, texts, 16), 4, tok.pad_token_id, None, 3)
    alone = [generate(model, encode_prompts(tok, [t], 16), 4, tok.pad_token_id, None, 1)[0]
             for t in texts]
    assert together == alone


def test_rouge_l_on_known_strings():
    assert rouge_l("the cat sat", ["the cat sat"]) == pytest.approx(1.0)
    assert rouge_l("", ["the cat"]) == 0.0
    # LCS "the cat" (2): P = 2/3, R = 2/2, F = 0.8
    assert rouge_l("the cat sat", ["the cat"]) == pytest.approx(0.8)
    # max over references; stemming makes "cats" match "cat"
    assert rouge_l("cats", ["dog", "the cat"]) == pytest.approx(2 * 0.5 / 1.5)
    scores = per_task_rouge(["a b", "x", "a"], [("a b",), ("y",), ("a",)], ["t1", "t1", "t2"])
    assert scores == pytest.approx({"t1": 0.5, "t2": 1.0})


def test_evaluate_generation_averages_tasks(cache, tok):
    prompts = encode_prompts(tok, [format_prompt(tok, "copy the word", w) for w in
                                   ["red", "cat"]], max_length=16)
    res = evaluate_generation(cache.global_model({}, {}), tok, prompts, [("red",), ("cat",)],
                              ["a", "b"], max_new_tokens=3)
    assert set(res["per_task"]) == {"a", "b"} and len(res["predictions"]) == 2
    assert res["rougeL"] == pytest.approx(sum(res["per_task"].values()) / 2)


def test_answer_loss_equals_the_full_forward_loss(cache, tok):
    from glora.tasks.prompts import lm_batch
    from glora.tasks.causal_lm import answer_loss

    task = task_for(tok)
    batch = lm_batch(task.data, slice(0, 4))
    for model in (cache.global_model({}, {}), cache.adapter(4).model):
        with torch.no_grad():
            full = model(**batch, use_cache=False).loss
            assert torch.allclose(answer_loss(model, batch), full, atol=1e-6)
