"""Model-level server state: one aggregation method applied to every adapted layer of a PEFT model.

Keys are PEFT's adapter-name-free keys (``get_peft_model_state_dict``): ``<layer>.lora_A.weight``
(``r x d_in``) and ``<layer>.lora_B.weight`` (``d_out x r``). Everything else a client returns
(the classifier head, PEFT ``modules_to_save``) is averaged with weights ``p_i`` unless the method
keeps it local (FedSA-LoRA).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any

import threadpoolctl
import torch
from torch import Tensor

from glora.aggregation import Accumulator, ClientUpdate, ServerState, aggregate, get_method
from glora.aggregation.shadow import shadow_norms
from glora.errors import InvalidUpdateError

LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


def split_adapter(state: dict[str, Tensor]) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, Tensor]]:
    """Split a PEFT state dict into ``{layer: (B, A)}`` and the remaining (head) tensors."""
    layers: dict[str, tuple[Tensor, Tensor]] = {}
    rest: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(LORA_A):
            prefix = key[: -len(LORA_A)]
            if prefix + LORA_B not in state:
                raise InvalidUpdateError(f"`{key}` has no matching `{prefix + LORA_B}`.", key=prefix)
            layers[prefix] = (state[prefix + LORA_B], value)
        elif key.endswith(LORA_B):
            if key[: -len(LORA_B)] + LORA_A not in state:
                raise InvalidUpdateError(f"`{key}` has no matching lora_A.", key=key[: -len(LORA_B)])
        else:
            rest[key] = value
    return layers, rest


def join_adapter(layers: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Inverse of the layer part of :func:`split_adapter`."""
    out: dict[str, Tensor] = {}
    for prefix, (B, A) in layers.items():
        out[prefix + LORA_B], out[prefix + LORA_A] = B, A
    return out


@dataclass
class ClientReply:
    """What a client sends back after a round (in-process or over Flower)."""

    client_id: int
    adapter: dict[str, Tensor]  # PEFT lora_A / lora_B keys
    head: dict[str, Tensor]
    num_examples: int
    scaling: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class GlobalModel:
    """The server's whole state for one method.

    ``layers`` holds each layer's :class:`ServerState` (empty before the first round); ``base``
    the dense deltas folded into the frozen weights so far (FLoRA merges, FedEx residuals).
    """

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    round: int = 0
    layers: dict[str, ServerState] = field(default_factory=dict)
    base: dict[str, Tensor] = field(default_factory=dict)
    head: dict[str, Tensor] = field(default_factory=dict)

    def total_delta(self) -> dict[str, Tensor]:
        """Dense update of every layer relative to the pretrained weight (evaluation, export).

        The folded ``base`` plus what the clients' start adapters add on top of it: the state's
        update less the part it folded this round (FLoRA folds all of it, FedEx-LoRA the residual).
        """
        out = {}
        for k, state in self.layers.items():
            folded = _dense(state.base_update())
            out[k] = state.delta() if folded is None else state.delta() - folded
        for k, b in self.base.items():
            out[k] = out[k] + b if k in out else b.clone()
        return out

    def start_adapter(self, rank: int, scaling: float,
                      local: dict[str, Tensor] | None = None) -> dict[str, Tensor] | None:
        """The adapter a client of ``rank`` starts from (``None``: fresh init).

        ``local`` holds the client's own kept parts (FedSA-LoRA's ``B``), which replace the
        global ones.
        """
        if not self.layers or next(iter(self.layers.values())).fresh_adapter:
            return None
        start = {}
        for prefix, state in self.layers.items():
            B, A = state.readout(rank, scaling)
            start[prefix + LORA_B], start[prefix + LORA_A] = B, A
        keep = get_method(self.method).local
        if "B" in keep:
            for key in [k for k in start if k.endswith(LORA_B)]:
                start[key] = (local or {}).get(key, torch.zeros_like(start[key]))
        return start

    def start_head(self, local: dict[str, Tensor] | None = None) -> dict[str, Tensor] | None:
        """The head a client starts from (``None``: the initial head).

        Where the method keeps heads local (FedSA-LoRA) that is the client's own, and a newcomer
        (no ``local``) keeps its fresh one: the averaged head serves global evaluation only.
        """
        if "head" in get_method(self.method).local:
            return {k: v for k, v in (local or {}).items() if k in self.head} or None
        return self.head or None

    def download_bytes(self, rank: int, scaling: float) -> int:
        """Bytes a client of ``rank`` receives: adapter parts, base updates and head."""
        spec = get_method(self.method)
        n = sum(t.numel() * t.element_size() for s in self.layers.values()
                for name, t in s.download_tensors(rank, scaling).items()
                if not (name == "B" and "B" in spec.local))
        if "head" not in spec.local:
            n += sum(t.numel() * t.element_size() for t in self.head.values())
        return n


def upload_bytes(method: str, reply: ClientReply, round_: int = 0) -> int:
    """Bytes a client sends in ``round_``: the factors the method uploads and the client trained
    that round, and the head unless kept local."""
    spec = get_method(method)
    suffixes = tuple(LORA_A if f == "A" else LORA_B for f in spec.uploads_in(round_))
    n = sum(t.numel() * t.element_size() for k, t in reply.adapter.items() if k.endswith(suffixes))
    if "head" not in spec.local:
        n += sum(t.numel() * t.element_size() for t in reply.head.values())
    return n


def layer_updates(replies: list[ClientReply]) -> dict[str, list[ClientUpdate]]:
    """Each adapted layer's client updates, in reply order.

    Raises:
        InvalidUpdateError: no replies, or a reply whose layers differ from the first's (naming
            its index in ``replies``).
    """
    if not replies:
        raise InvalidUpdateError("no client replies to aggregate.")
    per_client = [split_adapter(r.adapter)[0] for r in replies]
    keys = sorted(per_client[0])
    for i, layers in enumerate(per_client):
        problem = _layers_problem(layers, keys)
        if problem:
            raise InvalidUpdateError(problem, i)
    return {key: [ClientUpdate(per_client[i][key][0], per_client[i][key][1], r.num_examples,
                               r.scaling) for i, r in enumerate(replies)] for key in keys}


def _layers_problem(layers: dict[str, Any], keys: list[str]) -> str | None:
    """Why a reply's adapted ``layers`` differ from client 0's sorted ``keys``; ``None`` if not."""
    if sorted(layers) == keys:
        return None
    missing, extra = sorted(set(keys) - set(layers)), sorted(set(layers) - set(keys))
    return f"adapter layers differ from client 0's (missing {missing}, unexpected {extra})."


def shadow(model: GlobalModel, replies: list[ClientReply], rank: int) -> dict[str, float]:
    """How far ``model``'s round (aggregated from ``replies``) is from the exact average of the
    same replies and from its best rank-``rank`` truncation, over all layers at once.

    ``shadow_to_exact`` = ``sqrt(sum_l ||dW_l - D_l||^2 / sum_l ||D_l||^2)``, ``shadow_to_best``
    the same against the best rank-``rank`` approximation ``D_R`` (FlexLoRA's update), and
    ``shadow_best_to_exact`` the truncation's own loss ``D_R`` against ``D``
    (:func:`glora.aggregation.shadow.shadow_norms`). ``nan`` when the exact average is zero.
    """
    totals: dict[str, float] = {}
    for key, updates in layer_updates(replies).items():
        for name, value in shadow_norms(updates, model.layers[key], rank).items():
            totals[name] = totals.get(name, 0.0) + value
    exact = totals.pop("exact")
    return {f"shadow_{name}": (value / exact) ** 0.5 if exact > 0 else float("nan")
            for name, value in totals.items()}


def aggregate_model(previous: GlobalModel, replies: list[ClientReply], *,
                    merge: bool = True, device: str | torch.device = "cpu",
                    threads: int = 1) -> GlobalModel:
    """One server step over every layer; returns a new :class:`GlobalModel` (``previous`` intact).

    ``merge=False`` stops after the server's own work: this round's base updates are left out
    of ``base`` (it is ``previous``'s) for :func:`merge_base` to fold, so a caller can time the
    clients' part of the protocol apart from the server's. ``device`` is where each layer's
    aggregation runs (``server.device``: the core is plain torch); the states come back to the
    CPU, so checkpoints load anywhere. ``threads`` layers are aggregated at once
    (``server.threads``), each with its share of torch's and BLAS's threads
    (:func:`threads_per_layer`); the result is the same up to rounding (a BLAS call on fewer
    threads may sum in another order).

    Raises:
        InvalidUpdateError: naming the layer and the client (its index in ``replies``); with
            several bad layers, the first in key order.
    """
    device = torch.device(device)

    def one(key: str, updates: list[ClientUpdate]) -> ServerState:
        if device.type != "cpu":
            updates = [replace(u, B=u.B.to(device), A=u.A.to(device)) for u in updates]
        try:
            return on_cpu(aggregate(previous.method, updates, **previous.options))
        except InvalidUpdateError as err:
            raise InvalidUpdateError(err.reason, err.client, key) from None

    per_layer = layer_updates(replies)
    if threads == 1 or len(per_layer) == 1:
        layers = {key: one(key, updates) for key, updates in per_layer.items()}
    else:
        with threads_per_layer(threads), ThreadPoolExecutor(threads) as pool:
            layers = dict(zip(per_layer, pool.map(one, per_layer, per_layer.values())))
    # Heads are averaged for every method; where the method keeps heads local (FedSA-LoRA) this
    # average serves global evaluation only and is never sent down.
    head = _average_heads(replies)
    model = GlobalModel(previous.method, dict(previous.options), previous.round + 1, layers,
                        dict(previous.base), head)
    return merge_base(model) if merge else model


@contextlib.contextmanager
def threads_per_layer(threads: int) -> Iterator[None]:
    """torch's and BLAS's thread counts divided by ``threads`` (at least one each) while that
    many layers are aggregated at once: more threads than cores spin-wait, and ran 6x-100x
    slower on a 2-core machine."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"`threads` must be a positive integer, got {threads!r}.")
    before = torch.get_num_threads()
    each = max(1, before // threads)
    torch.set_num_threads(each)
    try:
        with threadpoolctl.threadpool_limits(limits=each, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def on_cpu(state: ServerState) -> ServerState:
    """``state`` with every tensor field on the CPU (the same object where all already are)."""
    moved = {f.name: v.cpu() for f in fields(state)
             if isinstance(v := getattr(state, f.name), Tensor) and v.device.type != "cpu"}
    return replace(state, **moved) if moved else state


def merge_base(model: GlobalModel) -> GlobalModel:
    """``model`` with its layers' base updates folded into ``base``, once per round.

    This is each client's work in the protocols: it merges them into its own frozen weight
    (FLoRA's dense ``L @ R``, FedEx-LoRA's residual); the server keeps the sum for evaluation.
    """
    base = {k: v.clone() for k, v in model.base.items()}
    for key, state in model.layers.items():
        dense = _dense(state.base_update())
        if dense is not None:
            base[key] = base[key] + dense if key in base else dense
    return replace(model, base=base)


def _dense(update: Tensor | tuple[Tensor, Tensor] | None) -> Tensor | None:
    """A base update as a dense matrix (it is folded into a dense frozen weight anyway)."""
    return update if update is None or isinstance(update, Tensor) else update[0] @ update[1]


def _head_problem(head: dict[str, Tensor], reference: dict[str, Tensor]) -> str | None:
    """Why ``head`` cannot be averaged with client 0's ``reference``; ``None`` when it can."""
    keys = sorted(reference)
    if sorted(head) != keys:
        return f"head keys {sorted(head)} differ from client 0's {keys}."
    for k in keys:
        if head[k].shape != reference[k].shape:
            return f"head `{k}` has shape {tuple(head[k].shape)}, expected " \
                   f"{tuple(reference[k].shape)}."
        if not bool(torch.isfinite(head[k]).all()):
            return f"head `{k}` has non-finite values."
    return None


def _average_heads(replies: list[ClientReply]) -> dict[str, Tensor]:
    for i, r in enumerate(replies):
        problem = _head_problem(r.head, replies[0].head)
        if problem:
            raise InvalidUpdateError(problem, i)
    total = sum(r.num_examples for r in replies)
    return {k: sum(r.num_examples / total * r.head[k] for r in replies)
            for k in sorted(replies[0].head)}


class ModelAccumulator:
    """:func:`aggregate_model` fed one reply at a time, as replies arrive.

    Each layer has a :class:`glora.Accumulator`, and heads are summed as they come. For a method
    with a stream rule (FedIT, FFA-LoRA, FedSVD, RoLoRA, FedSA-LoRA) the state is the running
    sums, ``O(d r)`` a layer, whatever the number of replies; for the others the layers'
    accumulators keep references to the updates (their aggregate needs all of them at once).
    A reply is checked in every layer and its head before any of it is added, so a bad one is
    rejected whole and the accumulator stays as it was. The result equals
    :func:`aggregate_model`'s up to the order of floating-point sums.

    Args:
        previous: the model of the round before.
        device: where the layers' updates are folded and aggregated (``server.device``).
    """

    def __init__(self, previous: GlobalModel, device: str | torch.device = "cpu") -> None:
        self.previous, self.device = previous, torch.device(device)
        self.count = 0  # replies added
        self._offered = 0  # replies given to `add`, rejected ones included: their positions
        self._layers: dict[str, Accumulator] = {}
        self._head: dict[str, Tensor] = {}  # sum of n_i * head_i, float64
        self._head_ref: dict[str, Tensor] | None = None  # client 0's keys, shapes, dtypes
        self._examples = 0

    def add(self, reply: ClientReply) -> None:
        """Check ``reply`` in every layer and fold it in.

        Raises:
            InvalidUpdateError: naming the reply's position (0-based, in the order given to
                ``add``, rejected ones included) and the layer; nothing of it is added.
        """
        position = self._offered
        self._offered += 1
        try:
            layers, _ = split_adapter(reply.adapter)
        except InvalidUpdateError as err:
            raise InvalidUpdateError(err.reason, position, err.key) from None
        head = reply.head
        accumulators = self._layers or {  # client 0's layers, kept once its reply is valid
            k: Accumulator(self.previous.method, **self.previous.options) for k in sorted(layers)}
        reference = head if self._head_ref is None else self._head_ref
        problem = _layers_problem(layers, list(accumulators)) or _head_problem(head, reference)
        if problem:
            raise InvalidUpdateError(problem, position)
        updates, checked = {}, {}
        for key, acc in accumulators.items():
            B, A = layers[key]
            updates[key] = ClientUpdate(B.to(self.device), A.to(self.device), reply.num_examples,
                                        reply.scaling)
            try:
                checked[key] = acc.check(updates[key])
            except InvalidUpdateError as err:
                raise InvalidUpdateError(err.reason, position, key) from None
        for key, acc in accumulators.items():
            acc.add(updates[key], checked[key])
        self._layers = accumulators
        if self._head_ref is None:  # client 0's head shapes and dtypes (meta: no memory)
            self._head_ref = {k: v.to("meta") for k, v in head.items()}
            self._head = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in head.items()}
        for k, v in head.items():
            self._head[k].add_(v.double(), alpha=reply.num_examples)
        self._examples += reply.num_examples
        self.count += 1

    def result(self, merge: bool = True) -> GlobalModel:
        """The new :class:`GlobalModel` from every reply added (``merge`` as for
        :func:`aggregate_model`).

        Raises:
            InvalidUpdateError: no reply was added, or a layer's aggregate failed (naming it).
        """
        if self.count == 0:
            raise InvalidUpdateError("no client replies to aggregate (none was added).")
        layers = {}
        for key, acc in self._layers.items():
            try:
                layers[key] = on_cpu(acc.result())
            except InvalidUpdateError as err:
                raise InvalidUpdateError(err.reason, err.client, key) from None
        assert self._head_ref is not None
        head = {k: (v / self._examples).to(self._head_ref[k].dtype)
                for k, v in sorted(self._head.items())}
        model = GlobalModel(self.previous.method, dict(self.previous.options),
                            self.previous.round + 1, layers, dict(self.previous.base), head)
        return merge_base(model) if merge else model
