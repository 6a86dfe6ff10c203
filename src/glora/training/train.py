"""One client's local training for any task, independent of any engine (simulator or Flower).

:func:`train_client` takes a :class:`~glora.contract.TrainTask` and returns a
:class:`~glora.contract.TrainResult`; the cache's task supplies the loss of a batch and checks the
client's data, so classification and causal-LM clients share this loop.
"""

from __future__ import annotations

import contextlib
import math
import time
import zlib

import numpy as np
import torch
from torch import Tensor

from glora.contract import TrainResult, TrainTask
from glora.devices import AUTOCAST_DTYPE
from glora.global_model import LORA_A, LORA_B

from . import privacy
from .cache import Adapter, ModelCache, check_tensors, copy_into


def init_lora_A(shape: tuple[int, int], generator: torch.Generator) -> Tensor:
    """PEFT's default ``lora_A`` init (Kaiming-uniform, ``a = sqrt(5)``), from ``generator``.

    The bound depends on ``d_in`` alone, so the first ``r`` rows of a draw at a larger rank are
    a draw at rank ``r``.
    """
    return torch.nn.init.kaiming_uniform_(torch.empty(shape), a=math.sqrt(5), generator=generator)


def layer_seed(init_seed: int, layer: str) -> int:
    """The seed of one layer's init: a function of the task's ``init_seed`` and the layer name,
    so no layer's draw depends on another's shape or on the order layers are visited in."""
    return int(np.random.SeedSequence([init_seed, zlib.crc32(layer.encode())]).generate_state(1)[0])


def start_adapter(task: TrainTask, adapter: Adapter) -> dict[str, Tensor]:
    """The task's start factors, with all-zero ``lora_A`` rows re-initialized.

    A zero row ``i`` of ``A`` makes column ``i`` of ``B`` irrelevant, so that column is zeroed:
    the start update ``s B A`` is unchanged, and the new row can train. A fresh start is the
    case where every row is zero. Each layer draws its init at ``task.init_rank`` rows from its
    own seed (:func:`layer_seed`) and keeps the first ``rank``: starts of different ranks from one
    ``init_seed`` are nested in every layer, as HetLoRA's truncation and ``train.init=shared``
    assume.
    """
    shapes = {k: tuple(p.shape) for k, p in adapter.lora.items()}
    given = task.adapter if task.adapter is not None else \
        {k: torch.zeros(s) for k, s in shapes.items()}
    check_tensors(shapes, given, f"rank-{task.rank} adapter")
    rows = task.rank if task.init_rank is None else task.init_rank
    start = {}
    for key_a in sorted(k for k in shapes if k.endswith(LORA_A)):
        layer = key_a.removesuffix(LORA_A)
        key_b = layer + LORA_B
        A, B = given[key_a], given[key_b]
        g = torch.Generator().manual_seed(layer_seed(task.init_seed, layer))
        fresh = init_lora_A((rows, shapes[key_a][1]), g)[: task.rank]
        dead = A.abs().amax(dim=1) == 0
        if bool(dead.any()):
            A, B = A.clone(), B.clone()
            A[dead], B[:, dead] = fresh[dead], 0.0
        start[key_a], start[key_b] = A, B
    return start


def batch_order(n: int, steps: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Example indices of each step: consecutive slices of a stream of shuffled epochs."""
    size = min(batch_size, n)
    stream = torch.empty(0, dtype=torch.long)
    batches = []
    for _ in range(steps):
        if len(stream) < size:
            stream = torch.cat([stream, torch.randperm(n, generator=generator)])
        batches.append(stream[:size])
        stream = stream[size:]
    return batches


def micro_batches(idx: Tensor, k: int) -> list[Tensor]:
    """``idx`` split into ``k`` consecutive, nearly equal parts (fewer if ``idx`` is shorter)."""
    return [part for part in torch.tensor_split(idx, min(k, len(idx))) if len(part)]


def _checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Activation (gradient) checkpointing on or off: transformers 5's ``activation_*`` methods
    where the model has them, the older ``gradient_*`` ones elsewhere."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def train_client(cache: ModelCache, task: TrainTask) -> TrainResult:
    """Train one client's adapter (and head, where the task has one) from the task's start;
    return copies of both, on the CPU.

    The LoRA settings (alpha, rsLoRA, dropout, target modules), the task and the device are the
    cache's. A step's ``batch_size`` examples are split into ``grad_accum_steps`` micro-batches
    whose gradients add up, each weighted by its share of the task's loss weight (examples, or
    answer tokens), so the step equals one pass over the whole batch. ``precision`` runs the
    forward pass under ``torch.autocast`` (fp16 with a gradient scaler); the trained parameters
    and the optimizer state stay float32. ``dp_noise_multiplier`` trains with DP-SGD
    (:func:`glora.training.privacy.private`).
    """
    problems = task.data_problems() or cache.task.data_problems(task.data)
    if problems:
        raise ValueError(f"client {task.client_id}, round {task.round}: {problems[0]}")
    started = time.perf_counter()
    device = cache.device
    adapter = cache.adapter(task.rank)
    copy_into(adapter.lora, start_adapter(task, adapter), f"rank-{task.rank} adapter")
    copy_into(adapter.head, task.head or cache.head_init, "head")
    cache.load_base(adapter.base_layers, task.base)

    frozen = tuple(LORA_A if f == "A" else LORA_B for f in task.frozen)
    groups = [{"params": [p for k, p in sorted(adapter.lora.items()) if not k.endswith(frozen)]},
              {"params": [p for _, p in sorted(adapter.head.items())],
               "lr": task.lr if task.head_lr is None else task.head_lr}]
    groups = [g for g in groups if g["params"]]  # a task without a head trains LoRA alone
    model = adapter.model.requires_grad_(False)
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    if task.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=task.lr,
                                                       weight_decay=task.weight_decay)
    else:
        opt = torch.optim.SGD(groups, lr=task.lr, weight_decay=task.weight_decay)
    autocast_dtype = AUTOCAST_DTYPE[task.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=task.precision == "fp16")

    batch_seed, dropout_seed = np.random.SeedSequence(
        [task.seed, task.round, task.client_id]).generate_state(2)
    order = batch_order(len(task.data[0]), task.steps, task.batch_size,
                        torch.Generator().manual_seed(int(batch_seed)))
    data = tuple(t.to(device) for t in task.data)
    base = model.get_base_model()
    losses = []
    dp = contextlib.nullcontext(opt) if task.dp_noise_multiplier is None else privacy.private(
        model, opt, task.dp_noise_multiplier, task.dp_max_grad_norm, len(order[0]))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), dp as opt:
        torch.manual_seed(int(dropout_seed))  # dropout and DP noise draw from here
        model.train()
        if task.gradient_checkpointing:
            _checkpointing(base, True)
        try:
            for idx in order:
                opt.zero_grad(set_to_none=True)
                parts = micro_batches(idx, task.grad_accum_steps)
                weights = [cache.task.loss_weight(data, part) for part in parts]
                step_loss = 0.0
                for part, weight in zip(parts, weights):
                    with torch.autocast(device.type, dtype=autocast_dtype,
                                        enabled=autocast_dtype is not None):
                        loss = cache.task.loss(model, data, part)
                    share = weight / sum(weights)
                    scaler.scale(loss * share if len(parts) > 1 else loss).backward()
                    step_loss += share * float(loss.detach())
                scaler.step(opt)
                scaler.update()
                losses.append(step_loss)
        finally:
            if task.gradient_checkpointing:
                _checkpointing(base, False)
            model.eval().requires_grad_(False)
    return TrainResult(
        client_id=task.client_id,
        adapter={k: p.detach().cpu().clone() for k, p in adapter.lora.items()},
        head={k: p.detach().cpu().clone() for k, p in adapter.head.items()},
        num_examples=len(task.data[0]), train_loss=sum(losses) / len(losses),
        seconds=time.perf_counter() - started)
