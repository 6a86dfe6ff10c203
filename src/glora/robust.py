"""Robust-aggregation safeguards that fit every method: they act on the replies, not the rule.

* :func:`clip_updates` scales a client's update ``s B A`` down to a maximum Frobenius norm per
  layer by scaling one factor (``B``, or ``A`` for methods that do not upload ``B``), so every
  method sees an ordinary, smaller adapter.
* :func:`cap_weights` caps any client's share of a round's weight and gives the excess to the
  others in proportion to their example counts; it does so by replacing the ``num_examples`` the
  methods weigh with (exact integers proportional to the capped shares).
"""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

from glora.global_model import LORA_A, LORA_B, ClientReply, split_adapter
from glora.validation import update_norm


def clip_updates(replies: list[ClientReply], max_norm: float, factor: str = "B",
                 ) -> list[ClientReply]:
    """Replies whose every layer has ``||s B A||_F <= max_norm`` (``factor`` is scaled down).

    Replies within the bound are returned as they are.
    """
    suffix = {"B": LORA_B, "A": LORA_A}[factor]
    out = []
    for r in replies:
        clipped = {}
        for prefix, (B, A) in split_adapter(r.adapter)[0].items():
            norm = update_norm(B, A, r.scaling)
            if norm > max_norm:
                clipped[prefix + suffix] = r.adapter[prefix + suffix] * (max_norm / norm)
        out.append(replace(r, adapter={**r.adapter, **clipped}) if clipped else r)
    return out


def capped_shares(counts: list[int], max_share: float) -> list[Fraction]:
    """Shares ``n_i / sum n_j`` with none above ``max_share`` (exact).

    Water-filling: the largest clients are capped one by one and the rest share what remains in
    proportion to their counts. Where ``max_share < 1 / len(counts)`` no shares can stay below
    the cap (after rejections a round can have that few clients): all are equal.
    """
    k, cap = len(counts), Fraction(max_share)
    if cap * k <= 1:
        return [Fraction(1, k)] * k
    order = sorted(range(k), key=lambda i: -counts[i])
    capped, rest = 0, sum(counts)
    while (1 - capped * cap) * counts[order[capped]] > cap * rest:
        rest -= counts[order[capped]]
        capped += 1
    top = set(order[:capped])
    return [cap if i in top else (1 - capped * cap) * Fraction(n, rest)
            for i, n in enumerate(counts)]


def cap_weights(replies: list[ClientReply], max_share: float) -> list[ClientReply]:
    """Replies whose ``num_examples`` weigh no client above ``max_share`` of the round.

    Unchanged when no client exceeds the cap; otherwise the counts become integers proportional to
    :func:`capped_shares` (their ratios are the shares exactly; their values mean nothing else).
    """
    counts = [r.num_examples for r in replies]
    if max(counts) <= Fraction(max_share) * sum(counts):
        return replies
    shares = capped_shares(counts, max_share)
    scale = math.lcm(*(s.denominator for s in shares))
    return [replace(r, num_examples=int(s * scale)) for r, s in zip(replies, shares)]
