"""A client's step time and peak memory on the CPU: fixed vs dynamic padding, fp32 vs bf16
autocast, a float32 vs bf16 frozen base (`model.dtype`), with and without gradient
checkpointing; ratios to the fp32 dynamic-padding step measured in the same run.

Every variant runs in its own process (one torch thread), so its peak resident memory is its
own: the model loaded, one warm-up step, then ``--steps`` timed steps of batch 16 on real
Rotten Tomatoes sentences, capped at 40 tokens (MiniLM-L6) or 128 (SmolLM2-135M as a
classifier). "fixed" pads every batch to the
length cap, as a trainer without per-batch trimming would. Run::

    python benchmarks/client_runtime.py [--models minilm,smollm2] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = {  # name -> (padding, precision, gradient checkpointing, frozen base dtype)
    "fp32 fixed": ("fixed", "fp32", False, "fp32"),
    "fp32 dynamic": ("dynamic", "fp32", False, "fp32"),
    "bf16 dynamic": ("dynamic", "bf16", False, "fp32"),
    "fp32 dynamic ckpt": ("dynamic", "fp32", True, "fp32"),
    "bf16 dynamic ckpt": ("dynamic", "bf16", True, "fp32"),
    "bf16 base dynamic": ("dynamic", "bf16", False, "bf16"),
    "bf16 base dynamic ckpt": ("dynamic", "bf16", True, "bf16"),
}
MODELS = {"minilm": (None, 40), "smollm2": ("smollm2-135m-instruct", 128)}


def child(model: str, variant: str, steps: int) -> dict:
    """One variant in this process: seconds per step and peak RSS (MiB)."""
    import torch

    torch.set_num_threads(1)
    from dataclasses import replace

    from glora.backbones import load_tokenizer
    from glora.contract import TrainTask
    from glora.data import load_dataset
    from glora.tasks import classification
    from glora.tasks.tokenize import tokenize
    from glora.training.cache import ModelCache
    from glora.training.train import train_client

    name, length = MODELS[model]
    padding, precision, checkpointing, dtype = VARIANTS[variant]
    cache = ModelCache(name, max_rank=8, dtype=dtype)
    tok = load_tokenizer(cache.path, pad=True)
    texts = load_dataset("rotten_tomatoes", seed=0).train.subset(list(range(256)))
    data = tokenize(tok, texts, length)
    if padding == "fixed":  # no per-batch trimming: every batch as long as the cap
        classification.batch_inputs = _untrimmed
    task = TrainTask(client_id=0, round=0, rank=8, seed=0, adapter=None, init_seed=0, head=None,
                     base={}, frozen=(), data=data, steps=steps, batch_size=16, lr=1e-3,
                     precision=precision, gradient_checkpointing=checkpointing)
    train_client(cache, replace(task, steps=1))
    started = time.perf_counter()
    train_client(cache, task)
    seconds = (time.perf_counter() - started) / steps
    return {"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _untrimmed(data, idx):
    from glora.tasks.tokenize import INPUT_NAMES

    *inputs, labels = (t[idx] for t in data)
    return dict(zip(INPUT_NAMES, inputs)), labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated (fp32 dynamic, the reference, always runs)")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for model in args.models.split(","):
        rows = {}
        chosen = ["fp32 dynamic", *(v for v in args.variants.split(",") if v != "fp32 dynamic")]
        unknown = sorted(set(chosen) - set(VARIANTS))
        if unknown:
            ap.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
        for variant in chosen:
            out = subprocess.run([sys.executable, __file__, "--child", model, variant, "--steps",
                                  str(args.steps)], capture_output=True, text=True, env=env)
            rows[variant] = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 \
                else {"error": out.stderr.strip().splitlines()[-1]}
        base = rows["fp32 dynamic"]
        print(f"\n{model}: batch 16, {args.steps} steps, 1 thread")
        print("| variant | ms per step | x fp32 dynamic | peak MiB | x fp32 dynamic |")
        print("|---|---|---|---|---|")
        for variant, r in rows.items():
            if "error" in r:
                print(f"| {variant} | failed: {r['error']} | | | |")
                continue
            print(f"| {variant} | {1000 * r['seconds']:.0f} | {r['seconds'] / base['seconds']:.2f} | "
                  f"{r['peak_mib']:.0f} | {r['peak_mib'] / base['peak_mib']:.2f} |")


if __name__ == "__main__":
    main()
