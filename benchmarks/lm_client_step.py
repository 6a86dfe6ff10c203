"""Seconds per local step and peak memory of a causal-LM client (SmolLM2-135M-Instruct, LoRA).

One process, one torch thread (as a simulated client). The batch is real Natural Instructions
training data where the tasks are already in the cache, else synthetic prompts filling the
sequence length. Run::

    python benchmarks/lm_client_step.py [--length 256] [--batch 4] [--rank 8] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch(tok, length: int, n: int, seed: int):
    from glora.tasks.prompts import encode_training, format_prompt

    try:
        from glora.data.natural_instructions import bigbench_tasks_dir, load_natural_instructions

        if not (bigbench_tasks_dir() / "index.json").is_file():
            raise FileNotFoundError
        ex = load_natural_instructions(unseen=0.2, train_per_task=8, seed=seed).train.examples
        g = torch.Generator().manual_seed(seed)
        ex = [ex[i] for i in torch.randperm(len(ex), generator=g)[:n].tolist()]
        source = "natural_instructions (bigbench archive)"
        prompts = [format_prompt(tok, " ".join(e.instruction.split()[:160]), e.input) for e in ex]
        answers = [e.outputs[0] for e in ex]
    except FileNotFoundError:
        source = "synthetic"
        prompts = [format_prompt(tok, "Repeat the input. " * 40, "the input " * 40)] * n
        answers = ["the input " * 20] * n
    return encode_training(tok, prompts, answers, length), source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="causal LM (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--length", type=int, default=256, help="sequence length (data.max_length)")
    ap.add_argument("--batch", type=int, default=4, help="batch size (train.batch_size)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--targets", default="q_proj,v_proj")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from glora.backbones import load_tokenizer
    from glora.contract import TrainTask
    from glora.training.cache import ModelCache
    from glora.training.train import train_client

    t0 = time.perf_counter()
    cache = ModelCache(args.model, target_modules=args.targets.split(","), task="causal_lm")
    load_s = time.perf_counter() - t0
    base_mb = rss_mb()
    data, source = batch(load_tokenizer(cache.path, pad=True), args.length, args.batch * args.steps, 0)
    tokens = int(data[1].sum()) / len(data[1])
    answer = float((data[2] != -100).sum()) / len(data[2])

    def task(steps: int) -> TrainTask:
        return TrainTask(client_id=0, round=0, rank=args.rank, seed=0, adapter=None, init_seed=0,
                         head=None, base={}, frozen=(), data=data, steps=steps,
                         batch_size=args.batch, lr=1e-4)

    train_client(cache, task(1))  # warm-up: adapter creation, first allocations
    t, cpu = time.perf_counter(), time.process_time()
    res = train_client(cache, task(args.steps))
    per_step = (time.perf_counter() - t) / args.steps
    cpu_step = (time.process_time() - cpu) / args.steps
    print(f"model {args.model or 'SmolLM2-135M-Instruct (GGUF -> float32)'}, LoRA r={args.rank} "
          f"on {args.targets}, 1 torch thread")
    print(f"data: {source}; length cap {args.length}, batch {args.batch}; mean tokens/example "
          f"{tokens:.0f} (answer {answer:.0f})")
    print(f"load {load_s:.1f} s; RSS after load {base_mb:.0f} MB")
    print(f"seconds per step: {per_step:.2f} wall, {cpu_step:.2f} CPU (train loss "
          f"{res.train_loss:.3f}); on a shared machine the CPU time is the one to compare")
    print(f"peak RSS: {rss_mb():.0f} MB; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")


if __name__ == "__main__":
    main()
