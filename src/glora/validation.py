"""Screening of client replies before aggregation: pure functions, one reason per rejection.

A reply is checked against what the server sent that client: the adapter of the rank it was
given (every adapted layer: ``lora_B`` ``d_out x r``, ``lora_A`` ``r x d_in``), the head's keys and
shapes, finite floating-point values, a positive example count no larger than the client holds,
and optional bounds (``server.max_update_norm``, ``server.max_examples``). A reason starts with
the name of the check that failed: ``client``, ``keys``, ``dtype``, ``shape``, ``finite``,
``examples`` or ``norm``.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from glora.global_model import LORA_A, LORA_B, ClientReply

CHECKS = ("client", "keys", "dtype", "shape", "finite", "examples", "norm")


@dataclass(frozen=True)
class ReplySchema:
    """What a valid reply holds: each adapted layer's ``(d_out, d_in)``, each head tensor's shape.

    Layer keys are PEFT prefixes (``<prefix>.lora_A.weight``), head keys full PEFT keys.
    """

    layers: dict[str, tuple[int, int]]
    head: dict[str, tuple[int, ...]]

    def adapter_shapes(self, rank: int) -> dict[str, tuple[int, int]]:
        """Shape of every adapter tensor of a rank-``rank`` client."""
        out = {}
        for prefix, (d_out, d_in) in self.layers.items():
            out[prefix + LORA_B], out[prefix + LORA_A] = (d_out, rank), (rank, d_in)
        return out

    @classmethod
    def of(cls, adapter: dict[str, Any], head: dict[str, Any]) -> ReplySchema | None:
        """The schema one reply follows, or ``None`` where it follows none (unpaired or
        non-matrix factors, non-tensors)."""
        if not isinstance(adapter, dict) or not isinstance(head, dict) \
                or not all(isinstance(t, Tensor) for t in (*adapter.values(), *head.values())):
            return None
        prefixes = {str(k).removesuffix(LORA_A).removesuffix(LORA_B) for k in adapter}
        layers = {}
        for p in prefixes:
            B, A = adapter.get(p + LORA_B), adapter.get(p + LORA_A)
            if B is None or A is None or B.dim() != 2 or A.dim() != 2:
                return None
            layers[p] = (int(B.shape[0]), int(A.shape[1]))
        return cls(dict(sorted(layers.items())),
                   {k: tuple(t.shape) for k, t in sorted(head.items())})


def majority_schema(replies: list[ClientReply]) -> ReplySchema | None:
    """The schema most replies follow (ties: the earliest reply's); ``None`` if none follows one.

    For a server that was not told its model's shapes: it trusts the majority of its first round.
    """
    schemas = [s for s in (ReplySchema.of(r.adapter, r.head) for r in replies) if s is not None]
    return max(schemas, key=schemas.count) if schemas else None


def update_norm(B: Tensor, A: Tensor, scaling: float) -> float:
    """``||s B A||_F`` without the dense matrix: ``s^2 trace((B^T B)(A A^T))``, in float64."""
    B, A = B.detach().double(), A.detach().double()
    return abs(scaling) * math.sqrt(max(float(((B.mT @ B) * (A @ A.mT)).sum()), 0.0))


@dataclass(frozen=True)
class Undecodable:
    """A reply the engine could not take (undecodable, or a node answering for another client),
    passed to the server in its place so that the rejection is recorded where the reply would
    have been screened."""

    client_id: Any
    reason: str  # "<check>: <why>", e.g. "decode: ..." or "client: ..."


def client_key(result: Any) -> Any:
    """How a result's client is named in a round's ``rejected``: its id, or the id's repr where
    that is not an integer."""
    cid = getattr(result, "client_id", None)
    return cid if isinstance(cid, int) and not isinstance(cid, bool) else repr(cid)


def result_problem(result: Any) -> str | None:
    """Why a client's result cannot even be screened (``"<check>: <detail>"``): an id, loss or
    part of the wrong type, or the engine's reason for an :class:`Undecodable` one; ``None``
    when it can."""
    if isinstance(result, Undecodable):
        return result.reason
    cid = getattr(result, "client_id", None)
    if isinstance(cid, bool) or not isinstance(cid, int):
        return f"client: `client_id` must be an integer, got {cid!r}"
    loss = getattr(result, "train_loss", None)
    if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
        return f"train_loss: must be a finite number, got {loss!r}"
    for part in ("adapter", "head"):
        if not isinstance(getattr(result, part, None), dict):
            return f"keys: the {part} is a {type(getattr(result, part, None)).__name__}, not a " \
                   "dict of tensors"
    return None


def unexpected_clients(client_ids: list[int], asked: set[int]) -> dict[int, str]:
    """Reasons for replies from clients not asked this round, or from a client twice (all its
    replies are left out: which one is genuine is unknown)."""
    counts = Counter(client_ids)
    out = {}
    for c in client_ids:
        if c not in asked:
            out[c] = f"client: not asked to train in this round (asked: {sorted(asked)})"
        elif counts[c] > 1:
            out[c] = f"client: answered {counts[c]} times"
    return out


def norm_outliers(replies: list[ClientReply], schema: ReplySchema | None,
                  factor: float) -> dict[int, str]:
    """``server.max_update_norm: auto``: the replies whose largest layer update ``||s B A||_F``
    exceeds ``factor`` times the median of the round's (at least 3; fewer have no meaningful
    median), with the reason."""
    if schema is None or len(replies) < 3:
        return {}
    norms = {r.client_id: max(update_norm(r.adapter[p + LORA_B], r.adapter[p + LORA_A], r.scaling)
                              for p in schema.layers) for r in replies}
    median = statistics.median(norms.values())
    return {c: f"norm: largest layer ||s B A||_F = {n:.4g} is above `server.norm_factor` = "
               f"{factor:g} times the round's median {median:.4g} (`server.max_update_norm: auto`)"
            for c, n in norms.items() if median > 0 and n > factor * median}


def check_reply(reply: ClientReply, rank: int, schema: ReplySchema, *,
                known_examples: int | None = None, max_examples: int | None = None,
                max_norm: float | None = None) -> str | None:
    """Why ``reply`` must be rejected (``"<check>: <detail>"``), or ``None`` when it is valid.

    Args:
        reply: the client's reply (its ``scaling`` is the server's, for its assigned rank).
        rank: the rank the server gave this client.
        schema: the model's layer and head shapes.
        known_examples: how many training examples the client holds, when the server knows.
        max_examples: a bound on any client's example count (``server.max_examples``).
        max_norm: a bound on ``||s B A||_F`` of every layer (``server.max_update_norm``).
    """
    n = reply.num_examples
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return f"examples: `num_examples` must be a positive integer, got {n!r}"
    for limit, what in ((known_examples, "the client holds"),
                        (max_examples, "`server.max_examples` allows")):
        if limit is not None and n > limit:
            return f"examples: claims {n} training examples; {what} {limit}"
    reason = _check_tensors(reply.adapter, schema.adapter_shapes(rank), f"rank-{rank} adapter") \
        or _check_tensors(reply.head, schema.head, "head")
    if reason is not None or max_norm is None:
        return reason
    for prefix in schema.layers:
        norm = update_norm(reply.adapter[prefix + LORA_B], reply.adapter[prefix + LORA_A],
                           reply.scaling)
        if not norm <= max_norm:
            return (f"norm: layer `{prefix}` has ||s B A||_F = {norm:.4g}, above "
                    f"`server.max_update_norm` = {max_norm:g}")
    return None


def _check_tensors(got: Any, expected: dict[str, tuple[int, ...]], part: str) -> str | None:
    """Keys, dtype, shape and finiteness of one part of a reply (the adapter or the head)."""
    if not isinstance(got, dict):
        return f"keys: the {part} is a {type(got).__name__}, not a dict of tensors"
    missing = sorted(str(k) for k in expected.keys() - got.keys())
    extra = sorted(str(k) for k in got.keys() - expected.keys())
    if missing or extra:
        return f"keys: the {part} lacks {missing[:3]} and has unexpected {extra[:3]}"
    for key, shape in expected.items():
        t = got[key]
        if not isinstance(t, Tensor) or not t.is_floating_point():
            kind = t.dtype if isinstance(t, Tensor) else type(t).__name__
            return f"dtype: {part} `{key}` is {kind}, expected a floating-point tensor"
        if tuple(t.shape) != shape:
            return f"shape: {part} `{key}` is {tuple(t.shape)}, expected {shape}"
        if not bool(torch.isfinite(t).all()):
            return f"finite: {part} `{key}` has NaN or inf values"
    return None
