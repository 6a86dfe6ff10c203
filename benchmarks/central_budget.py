"""What the default run's training budget buys without federation: one client holding all data.

The default comparison gives each client 8 rounds x 5 local steps at batch 8. This trains the
packaged MiniLM-L6 on the whole Rotten Tomatoes training split with the simulator's own client
loop (``train_client``), in chunks of ``--chunk`` steps that each start a fresh optimizer as a
round does, and prints test accuracy and loss every ``--every`` steps. It bounds what a
federated run of that budget can reach, and shows which learning rates learn at all.

    python benchmarks/central_budget.py [--steps 40] [--chunk 5] [--lrs 5e-3,2e-3,1e-3]

One torch thread; about 0.05 s per training example on this machine's cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402

import torch  # noqa: E402

from glora.backbones import default_model_path, load_tokenizer  # noqa: E402
from glora.contract import TrainTask  # noqa: E402
from glora.data import load_dataset  # noqa: E402
from glora.global_model import LORA_A, LORA_B  # noqa: E402
from glora.tasks.classification import score  # noqa: E402
from glora.tasks.tokenize import tokenize  # noqa: E402
from glora.training.cache import ModelCache  # noqa: E402
from glora.training.train import train_client  # noqa: E402


def deltas(adapter: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Dense ``s B A`` per adapted layer."""
    return {k.removesuffix(LORA_A): scaling * adapter[k.removesuffix(LORA_A) + LORA_B] @ a
            for k, a in adapter.items() if k.endswith(LORA_A)}


def curve(cache: ModelCache, train: tuple, test: tuple, args: argparse.Namespace,
          lr: float, schedule: str) -> list[str]:
    """``accuracy/loss`` every ``args.every`` steps of chunked training at ``lr``."""
    adapter, head, done, out = None, None, 0, []
    chunks = -(-args.steps // args.chunk)
    for i in range(chunks):
        rate = lr * (0.5 * (1 + torch.cos(torch.tensor(torch.pi * i / chunks))).item()
                     if schedule == "cosine" else 1.0)
        steps = min(args.chunk, args.steps - done)
        result = train_client(cache, TrainTask(
            client_id=0, round=i, rank=args.rank, seed=args.seed, adapter=adapter, init_seed=0,
            head=head, base={}, frozen=(), data=train, steps=steps, batch_size=args.batch,
            lr=rate))
        adapter, head, done = result.adapter, result.head, done + steps
        if done % args.every == 0 or done == args.steps:
            scores = score(cache.global_model(deltas(adapter, cache.scaling(args.rank)), head),
                           test)
            out.append(f"{scores['accuracy']:.3f} / {scores['loss']:.3f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--chunk", type=int, default=5, help="steps per fresh optimizer")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--lrs", default="5e-3,2e-3,1e-3")
    parser.add_argument("--schedules", default="constant,cosine")
    parser.add_argument("--test", type=int, default=500, help="random test sentences")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits = load_dataset("rotten_tomatoes")
    tokenizer = load_tokenizer(default_model_path())
    train = tokenize(tokenizer, splits.train, 40)
    full = tokenize(tokenizer, splits.test, 40)
    pick = torch.randperm(len(full[0]), generator=torch.Generator().manual_seed(0))[:args.test]
    test = tuple(t[pick] for t in full)
    cache = ModelCache(max_rank=args.rank)
    marks = [s for s in range(args.every, args.steps + 1, args.every)]
    if not marks or marks[-1] != args.steps:
        marks.append(args.steps)
    print(f"# one client, all {len(train[0])} training sentences, rank {args.rank}, batch "
          f"{args.batch}, fresh AdamW every {args.chunk} steps, {len(test[0])} test sentences; "
          f"load average {os.getloadavg()}")
    print("\n| lr | schedule | " + " | ".join(f"step {s}: acc / loss" for s in marks) + " |")
    print("|---|---|" + "---|" * len(marks))
    for schedule in args.schedules.split(","):
        for lr in (float(x) for x in args.lrs.split(",")):
            print(f"| {lr:g} | {schedule} | " + " | ".join(curve(cache, train, test, args, lr,
                                                                 schedule)) + " |", flush=True)


if __name__ == "__main__":
    main()
