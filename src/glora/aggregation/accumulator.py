"""One layer's aggregation fed one client update at a time, as replies arrive.

>>> import torch, glora
>>> acc = glora.Accumulator("fedit")
>>> for n in (10, 30):
...     acc.add(glora.ClientUpdate(torch.randn(6, 2), torch.randn(2, 5), n, 0.5))
>>> state = acc.result()  # what glora.aggregate("fedit", [both updates]) returns

Memory. A method whose aggregate is linear in the factors (its spec's ``stream``: FedIT, FFA-LoRA,
FedSVD, RoLoRA, FedSA-LoRA) folds each update into running weighted sums and keeps ``O(d r)``
state however many clients arrive. The others need every update at once: GLoRA's consensus must
be known before any client's share of the core can be taken, and FlexLoRA's SVD is of the whole
average. For them the accumulator keeps the updates (references: the caller's tensors are not
copied), and :meth:`Accumulator.result` is the second pass over them. Beyond the updates, GLoRA's
exact solver holds the ``(sum r_i)^2`` Gram matrix, its randomized one the clients' bases (the
size of their ``B`` factors).

A bad update is rejected by :meth:`Accumulator.add` with an
:class:`~glora.errors.InvalidUpdateError` naming its position; it is not added, and the
accumulator goes on with the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from glora.errors import InvalidUpdateError

from .base import ClientUpdate, ServerState, validate_updates, weights
from .registry import StreamRule, finite, get_method


class Accumulator:
    """Aggregate one layer's client updates with method ``name`` as they arrive.

    Args:
        name: a registered method (:func:`glora.methods`).
        **options: the method's options, as for :func:`glora.aggregate`; checked at once.
    """

    def __init__(self, name: str, **options: Any) -> None:
        self.spec = get_method(name)
        self.config = self.spec.make_config(**options)
        self.count = 0  # updates added
        self._offered = 0  # updates given to `add`, rejected ones included: their positions
        self._first: ClientUpdate | None = None  # client 0's shapes: the cross-client checks
        self._held: list[ClientUpdate] = []  # methods without a stream rule
        self._sums: _FactorSums | None = None

    def check(self, update: ClientUpdate) -> _Checked:
        """``update`` validated against the first one added, as :meth:`add` would take it (pass
        the result to :meth:`add`); the accumulator is unchanged. A caller adding one client's
        updates to several accumulators (the layers of a model) checks them all before adding
        any.

        Raises:
            InvalidUpdateError: naming the position ``update`` would take.
        """
        try:
            checked = validate_updates([update], mixed_ranks=self.spec.mixed_ranks,
                                       method=self.spec.name, reference=self._first)[0]
        except InvalidUpdateError as e:
            raise InvalidUpdateError(e.reason, self._offered, e.key) from None
        shared = None if self._sums is None else \
            self._sums.shared_after(checked, self._offered, self.spec.name)
        return _Checked(checked, shared)

    def add(self, update: ClientUpdate, checked: _Checked | None = None) -> None:
        """Check ``update`` against the first one and fold it in (or keep it); ``checked`` is
        :meth:`check`'s result for it, where the caller has it.

        Raises:
            InvalidUpdateError: naming the update's position (0-based, in the order given to
                ``add``, rejected ones included); the update is left out and the accumulator is
                unchanged.
        """
        try:
            checked = self.check(update) if checked is None else checked
            rule = self.spec.stream
            if rule is not None:
                if self._sums is None:
                    self._sums = _FactorSums(checked.update, rule,
                                             getattr(self.config, "rtol", 0.0))
                else:
                    assert checked.shared is not None
                    self._sums.add(checked.update, checked.shared)
            else:
                self._held.append(update)
        finally:
            self._offered += 1
        if self._first is None:  # its shapes only (meta tensors): it holds no memory
            u = checked.update
            self._first = ClientUpdate(u.B.to("meta"), u.A.to("meta"), u.num_examples, u.scaling)
        self.count += 1

    def result(self) -> ServerState:
        """The aggregate of every update added so far: :func:`glora.aggregate`'s, up to the order
        of floating-point sums."""
        if self.count == 0:
            raise InvalidUpdateError("no client updates to aggregate (none was added).")
        if self._sums is None:
            held = validate_updates(self._held, mixed_ranks=self.spec.mixed_ranks,
                                    method=self.spec.name)
            return finite(self.spec.aggregate(held, weights(held), self.config), held[0].B.dtype)
        merged = self._sums.merged()
        return finite(self.spec.aggregate([merged], [1.0], self.config), merged.B.dtype)

    def tensors(self) -> list[Tensor]:
        """Every tensor the accumulator holds (what its memory is made of)."""
        held = [t for u in self._held for t in (u.B, u.A)]
        return held + ([] if self._sums is None else self._sums.tensors())


@dataclass(frozen=True)
class _Checked:
    """An update as :meth:`Accumulator.check` validated it, with the factors still shared once
    it is added (``None`` before the first update of a stream rule, or without one)."""

    update: ClientUpdate
    shared: dict[str, Tensor] | None


class _FactorSums:
    """Running sums from which a factor-averaging method's aggregate is taken: one update whose
    ``(B, A, s)`` are the round's averages (:func:`~glora.aggregation.base.average_factors`, or
    FedIT's plain ones), and the shared-factor checks against client 0."""

    def __init__(self, first: ClientUpdate, rule: StreamRule, rtol: float) -> None:
        self.rule, self.rtol, self.dtype = rule, rtol, first.B.dtype
        self.n = first.num_examples
        self.ns = first.num_examples * first.scaling
        weight = self.ns if rule.scaled_B else self.n
        self.B = first.B.double() * weight
        self.A = first.A.double() * self.n
        self.shared = {f: getattr(first, f) for f in ("A", "B")
                       if f in rule.shared or rule.one_shared}

    def shared_after(self, u: ClientUpdate, index: int, method: str) -> dict[str, Tensor]:
        """The factors still shared by every client once ``u`` is added.

        Raises:
            InvalidUpdateError: ``u`` does not share a factor the rule needs shared.
        """
        still = {f: ref for f, ref in self.shared.items() if self._same(ref, getattr(u, f))}
        lost = [f for f in self.rule.shared if f not in still]
        if lost or (self.rule.one_shared and not still):
            factors = " and ".join(f"`{f}`" for f in (lost or sorted(self.shared)))
            need = "it" if lost else "one of them"
            raise InvalidUpdateError(f"{factors}: not client 0's (by more than `rtol` = "
                                     f"{self.rtol:g} of its largest entry); `{method}` needs "
                                     f"{need} shared by every client (frozen at the server's "
                                     "copy).", index)
        return still

    def add(self, u: ClientUpdate, shared: dict[str, Tensor]) -> None:
        """Fold ``u`` in; ``shared`` is :meth:`shared_after`'s result for it."""
        self.shared = shared
        self.dtype = torch.promote_types(self.dtype, u.B.dtype)
        self.n += u.num_examples
        self.ns += u.num_examples * u.scaling
        self.B.add_(u.B.double(), alpha=u.num_examples * (u.scaling if self.rule.scaled_B else 1))
        self.A.add_(u.A.double(), alpha=u.num_examples)

    def _same(self, ref: Tensor, t: Tensor) -> bool:
        return float((t - ref).abs().max()) <= self.rtol * float(ref.abs().max())

    def merged(self) -> ClientUpdate:
        """One update with the round's averages: the method's aggregate of it alone is the
        aggregate of the round."""
        B = self.B / (self.ns if self.rule.scaled_B else self.n)
        A = self.A / self.n
        return ClientUpdate(B.to(self.dtype), A.to(self.dtype), self.n, self.ns / self.n)

    def tensors(self) -> list[Tensor]:
        return [self.B, self.A, *self.shared.values()]
