"""One causal-LM client's local training: the :func:`glora.client.train.train_client` contract
(:class:`~glora.client.train.TrainTask` in, :class:`~glora.client.train.TrainResult` out) with data
``(input_ids, attention_mask, labels)``, labels ``-100`` outside the answer tokens."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glora.client.train import TrainResult, TrainTask, batch_order, start_adapter
from glora.lm.tokenize import IGNORE_INDEX, lm_batch
from glora.models import LORA_A, LORA_B, copy_into


def lm_data_problems(task: TrainTask) -> list[str]:
    """What is wrong with the task's data for a causal LM (empty list: nothing)."""
    data = task.data
    if len(data) != 3 or len({tuple(t.shape) for t in data}) != 1 or data[0].ndim != 2 \
            or len(data[0]) == 0:
        return ["causal-LM `data` must be (input_ids, attention_mask, labels), three tensors of "
                f"one shape n x length, got shapes {[tuple(t.shape) for t in data]}."]
    empty = (data[2] == IGNORE_INDEX).all(dim=1)
    if bool(empty.any()):
        return [f"{int(empty.sum())} example(s) have no answer token to train on (all labels "
                f"-100), e.g. row {int(empty.nonzero()[0])}; raise `data.max_length`."]
    return []


#: Architectures whose logits are exactly ``lm_head(final hidden state)`` (no soft-capping or
#: logit scale), where :func:`answer_loss` projects only the answer positions.
PLAIN_HEAD_TYPES = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo", "olmo2")


def answer_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean next-token cross-entropy over the answer tokens (labels not ``-100``).

    Equal to Hugging Face's ``model(**batch).loss``, but for the architectures of
    :data:`PLAIN_HEAD_TYPES` the output layer runs on the answer positions only, not on every
    position of the batch: with a 49k-token vocabulary that saves the ``batch x length x vocab``
    logits (and their gradient), most of the step's memory.
    """
    net = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(net.config, "model_type", None) not in PLAIN_HEAD_TYPES:
        return model(**batch, use_cache=False).loss
    hidden = net.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               use_cache=False).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    logits = net.get_output_embeddings()(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, labels[keep])


def train_lm_client(cache, task: TrainTask) -> TrainResult:
    """Train one client's LoRA adapter on its answer tokens; return a copy of it (head empty).

    ``cache`` is a :class:`glora.lm.models.CausalLMCache`; the LoRA settings are its own.
    """
    problems = lm_data_problems(task)
    if problems:
        raise ValueError(f"client {task.client_id}, round {task.round}: {problems[0]}")
    started = time.perf_counter()
    adapter = cache.adapter(task.rank)
    copy_into(adapter.lora, start_adapter(task, adapter), f"rank-{task.rank} adapter")
    cache.load_base(adapter.base_layers, task.base)

    frozen = tuple(LORA_A if f == "A" else LORA_B for f in task.frozen)
    trainable = [p for k, p in sorted(adapter.lora.items()) if not k.endswith(frozen)]
    model = adapter.model.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    if task.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(trainable, lr=task.lr,
                                                       weight_decay=task.weight_decay)
    else:
        opt = torch.optim.SGD(trainable, lr=task.lr, weight_decay=task.weight_decay)

    batch_seed, dropout_seed = np.random.SeedSequence(
        [task.seed, task.round, task.client_id]).generate_state(2)
    order = batch_order(len(task.data[0]), task.steps, task.batch_size,
                        torch.Generator().manual_seed(int(batch_seed)))
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(dropout_seed))
        model.train()
        try:
            for idx in order:
                loss = answer_loss(model, lm_batch(task.data, idx))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        finally:
            model.eval().requires_grad_(False)
    return TrainResult(
        client_id=task.client_id,
        adapter={k: p.detach().clone() for k, p in adapter.lora.items()},
        head={}, num_examples=len(task.data[0]), train_loss=sum(losses) / len(losses),
        seconds=time.perf_counter() - started)
