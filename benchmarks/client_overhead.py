"""Client training overhead of the simulator, and the speed-up of two worker processes.

1. The simulator's local training (``train_client``: loading the start adapter, head and base
   weights, then the steps) against a plain PEFT loop (``get_peft_model`` + AdamW) over the same
   batches, same model, one thread each: the ratio of their times (goal: within 10%).
2. ``ClientExecutor`` with two worker processes against one on the same client tasks (goal: at
   least 1.6x). Pools are warmed up first, so process start-up is not counted.

    python benchmarks/client_overhead.py [--steps 20] [--batch 16] [--clients 4] [--repeats 3]

The machine is shared: times are measured in the same run and reported as ratios, with the load
average before and after.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from glora.backbones import default_model_path, load_tokenizer  # noqa: E402
from glora.contract import TrainTask  # noqa: E402
from glora.data import load_dataset  # noqa: E402
from glora.sim.workers import ClientExecutor  # noqa: E402
from glora.tasks.classification import ClassificationTask, load_classifier  # noqa: E402
from glora.tasks.tokenize import batch_inputs, tokenize  # noqa: E402
from glora.training.cache import ModelCache, lora_config  # noqa: E402
from glora.training.train import batch_order, train_client  # noqa: E402


def plain_peft_seconds(data: tuple, batches: list, rank: int) -> float:
    """A plain PEFT training loop over ``batches``; returns seconds for the steps."""
    from peft import get_peft_model

    model = get_peft_model(load_classifier(default_model_path(), num_labels=2),
                           lora_config(ClassificationTask.peft_type, rank, 16.0,
                                       ("query", "value")))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    started = time.perf_counter()
    for idx in batches:
        inputs, labels = batch_inputs(data, idx)
        loss = model(**inputs, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - started


def task(client: int, data: tuple, steps: int, batch: int, rank: int) -> TrainTask:
    return TrainTask(client_id=client, round=0, rank=rank, seed=0, adapter=None, init_seed=1,
                     head=None, base={}, frozen=(), data=data, steps=steps, batch_size=batch,
                     lr=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# client overhead; load average before: {os.getloadavg()}; torch {torch.__version__}")
    train = load_dataset("rotten_tomatoes").train
    data = tokenize(load_tokenizer(default_model_path()), train.subset(list(range(512))), args.max_length)

    # 1. simulator local step vs plain PEFT loop, same batches (batch_order of task 0)
    cache = ModelCache(max_rank=args.rank)
    t0 = task(0, data, args.steps, args.batch, args.rank)
    train_client(cache, task(0, data, 2, args.batch, args.rank))  # warm-up
    from numpy.random import SeedSequence

    batch_seed, _ = SeedSequence([t0.seed, t0.round, t0.client_id]).generate_state(2)
    batches = batch_order(len(data[0]), args.steps, args.batch,
                          torch.Generator().manual_seed(int(batch_seed)))
    sim, plain = [], []
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
        started = time.perf_counter()
        train_client(cache, t0)
        sim.append(time.perf_counter() - started)
        plain.append(plain_peft_seconds(data, batches, args.rank))
    s, p = statistics.median(sim), statistics.median(plain)
    print(f"\n| loop | s/step (median of {args.repeats}) |\n|---|---|")
    print(f"| glora train_client (incl. loading start state) | {s / args.steps:.3f} |")
    print(f"| plain PEFT loop | {p / args.steps:.3f} |")
    print(f"\noverhead ratio sim/plain: {s / p:.3f}  ({'PASS' if s / p <= 1.10 else 'FAIL'}: goal <= 1.10)")

    # 2. one vs two worker processes on the same tasks
    tasks = [task(c, data, args.steps, args.batch, args.rank) for c in range(args.clients)]
    spec = {"max_rank": args.rank}
    times = {}
    for workers in (1, 2):
        with ClientExecutor(spec, workers) as run:
            run([task(c, data, 1, args.batch, args.rank) for c in range(workers)])  # warm-up
            started = time.perf_counter()
            run(tasks)
            times[workers] = time.perf_counter() - started
    speedup = times[1] / times[2]
    print(f"\n{args.clients} clients x {args.steps} steps: 1 worker {times[1]:.1f} s, "
          f"2 workers {times[2]:.1f} s")
    print(f"speed-up: {speedup:.2f}x  ({'PASS' if speedup >= 1.6 else 'FAIL'}: goal >= 1.6x)")
    print(f"# load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
