"""Zero-shot ROUGE-L of the untuned causal LM on the seen and unseen Natural Instructions tasks.

The same split, prompts and scoring as ``glora run --config configs/superni_scaled.yaml`` at
round 0 (no adapter). Run::

    python benchmarks/lm_zero_shot.py [--test-per-task 2] [--length 256] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--test-per-task", type=int, default=2)
    ap.add_argument("--length", type=int, default=256, help="prompt tokens (data.max_length)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--unseen", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=None, help="write per-task scores and predictions here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from glora.data.natural_instructions import load_natural_instructions
    from glora.backbones import load_tokenizer
    from glora.tasks.causal_lm import LM_OPTIONS, eval_set
    from glora.tasks.generation import evaluate_generation
    from glora.training.cache import ModelCache

    s = load_natural_instructions(unseen=args.unseen, test_per_task=args.test_per_task,
                                  seed=args.seed)
    cache = ModelCache(args.model, task="causal_lm")
    tokenizer = load_tokenizer(cache.path, pad=True)
    out = {}
    for name, data in (("unseen", s.test_unseen), ("seen", s.test_seen)):
        t = time.perf_counter()
        es = eval_set(tokenizer, data, dict(LM_OPTIONS), args.length)
        r = evaluate_generation(cache.global_model({}, {}), tokenizer, es.prompts,
                                es.references, es.tasks, args.max_new_tokens, args.batch)
        out[name] = {"rougeL": r["rougeL"], "examples": len(data), "tasks": len(r["per_task"]),
                     "seconds": time.perf_counter() - t, "per_task": r["per_task"],
                     "predictions": r["predictions"]}
        print(f"{name}: ROUGE-L {r['rougeL']:.4f} over {len(r['per_task'])} tasks "
              f"({len(data)} examples, {out[name]['seconds']:.0f} s)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
