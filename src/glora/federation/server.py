"""The federated server, engine-free: configure a round, aggregate its replies, evaluate.

The in-process simulator and the Flower strategy both drive this class, so the same rules run
in a laptop simulation and in a deployment. Every reply is screened first
(:mod:`glora.validation`): an invalid one is left out of its round, logged and recorded. The
robust safeguards (:mod:`glora.robust`) then apply to the valid replies. ``state`` is replaced
only once a round's new server state is complete: a failed round leaves it as it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from glora import robust, validation
from glora.aggregation import ServerState, get_method
from glora.config import ExperimentConfig
from glora.contract import TrainTask
from glora.devices import resolve_device
from glora.errors import AggregationError, InvalidUpdateError
from glora.global_model import (LORA_B, ClientReply, GlobalModel, ModelAccumulator,
                                aggregate_model, merge_base, shadow, split_adapter, upload_bytes)
from glora.training import privacy

from . import checkpoint, plan
from .records import FEDERATED

log = logging.getLogger("glora.federation.server")


class Evaluator(Protocol):
    def evaluate(self, deltas: dict[str, Tensor], head: dict[str, Tensor], prefix: str,
                 client: int | None = None) -> dict[str, float]: ...

    def test_size(self, client: int) -> int: ...



def federated_means(scores: list[tuple[dict[str, float], int]]) -> dict[str, Any]:
    """Clients' evaluations (metrics, test examples) as means weighted by test examples, with
    ``federated_examples``: Flower's federated evaluation. Each metric is the mean over the
    clients that report it (FedSA-LoRA's newcomers have no personal model); clients without
    examples count for nothing."""
    scores = [(s, n) for s, n in scores if n > 0]
    if not scores:
        return {}
    keys = sorted({k for s, _ in scores for k in s})
    means = {k: sum(s[k] * n for s, n in scores if k in s) / sum(n for s, n in scores if k in s)
             for k in keys}
    return {**means, FEDERATED + "examples": sum(n for _, n in scores)}


@dataclass
class RunState:
    """Everything a run needs to continue: the server state, clients' local parts, history."""

    model: GlobalModel
    local: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # FedSA-LoRA's B and head
    history: list[dict[str, Any]] = field(default_factory=list)
    schema: validation.ReplySchema | None = None  # the shapes valid replies have
    # DP-SGD account: client -> (noise multiplier, sample rate, steps) of each round it trained
    privacy: dict[int, list[tuple[float, float, int]]] = field(default_factory=dict)


def state_classes() -> list[type]:
    """The classes a run's checkpoint holds besides tensors and containers."""
    def subclasses(cls: type) -> list[type]:
        return [cls] + [s for c in cls.__subclasses__() for s in subclasses(c)]

    return [RunState, GlobalModel, validation.ReplySchema, *subclasses(ServerState)]


def load_state(path: Path) -> RunState:
    """A :class:`RunState` checkpoint, loaded without running any pickled code."""
    return checkpoint.load(path, state_classes())


@dataclass(frozen=True)
class _Taken:
    """What a round keeps of a reply it aggregated."""

    client_id: int
    train_loss: float
    bytes_up: int
    kept: dict[str, Tensor] | None  # the parts the method keeps on the client, if any


class FederatedServer:
    """One method's server over rounds.

    Args:
        cfg: the experiment config.
        method: registry name of the aggregation method.
        evaluator: scores a model given per-layer dense deltas and a head (``None``: no eval).
        schema: the model's layer and head shapes replies are checked against (``None``: the
            shapes most replies of the first round have).
        examples: client -> number of training examples, where the server knows them (a Flower
            server learns them from the nodes): a reply claiming more is rejected.
    """

    def __init__(self, cfg: ExperimentConfig, method: str, evaluator: Evaluator | None,
                 schema: validation.ReplySchema | None = None,
                 examples: dict[int, int] | None = None) -> None:
        self.cfg, self.method, self.evaluator = cfg, method, evaluator
        self.spec = get_method(method)
        self.ranks, self.label = plan.method_ranks(cfg, method)
        self.examples = examples
        self.device = resolve_device(cfg.server.device, "server.device")
        self.noise = plan.dp_noise(cfg, examples)
        self.state = RunState(GlobalModel(method, plan.method_options(cfg, method, self.ranks)),
                              schema=schema)
        self._asked: tuple[int, set[int]] = (-1, set())  # (round, clients) of the last configure

    @property
    def round(self) -> int:
        return self.state.model.round

    def eval_due(self) -> bool:
        """Whether the global model is evaluated after the round just aggregated: every
        ``eval.every`` rounds and after the last."""
        return self.round % self.cfg.eval.every == 0 or self.round == self.cfg.train.rounds

    def scaling(self, client: int) -> float:
        return plan.client_scaling(self.cfg, self.ranks[client])

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        checkpoint.save_atomic(self.state, path)

    def load(self, path: Path) -> None:
        schema = self.state.schema
        self.state = load_state(path)
        vars(self.state).setdefault("privacy", {})  # checkpoints from before DP had none
        if self.state.schema is None:  # not learnt yet: keep the one this server was given
            self.state.schema = schema
        log.info("%s: resuming after round %d", self.label, self.round)

    # -- a round -------------------------------------------------------------------------------
    def configure(self, clients: list[int] | None = None) -> list[TrainTask]:
        """The training tasks of this round (``data`` left empty: the engine attaches it)."""
        t = self.round
        clients = plan.sample_clients(self.cfg, t) if clients is None else clients
        model = self.state.model
        self._asked = (t, set(clients))
        lr, head_lr = plan.round_lr(self.cfg, t)
        tasks = []
        for c in clients:
            local = self.state.local.get(c)
            tasks.append(TrainTask(
                client_id=c, round=t, rank=self.ranks[c], seed=plan.train_seed(self.cfg, t, c),
                init_seed=plan.init_seed(self.cfg, t, c, self.method), init_rank=max(self.ranks),
                adapter=model.start_adapter(self.ranks[c], self.scaling(c), local),
                head=model.start_head(local), base=model.base, frozen=self.spec.frozen_in(t),
                data=(), steps=self.cfg.train.local_steps, batch_size=self.cfg.train.batch_size,
                lr=lr, optimizer=self.cfg.train.optimizer,
                weight_decay=self.cfg.train.weight_decay, head_lr=head_lr,
                precision=self.cfg.train.precision,
                grad_accum_steps=self.cfg.train.grad_accum_steps,
                gradient_checkpointing=self.cfg.train.gradient_checkpointing,
                dp_noise_multiplier=self.noise, dp_max_grad_norm=self.cfg.train.dp_max_grad_norm))
        return tasks

    def aggregate(self, results: Iterable[Any], extra: dict[str, Any] | None = None,
                  rejected: dict[Any, str] | None = None) -> dict[str, Any]:
        """Screen the round's results, aggregate the valid ones, evaluate; return the record.

        ``results`` answer the tasks of the last :meth:`configure` (``TrainResult``s: client id,
        adapter, head, example count, train loss). Invalid ones are left out with a warning and
        listed in the record's ``rejected`` (client id -> reason), with ``rejected`` given by the
        engine (replies it could not even decode); a client whose update the method refuses
        (say, one that overflows) is rejected too and the round aggregates without it. The
        record also holds the shadow distances of the round (:func:`glora.global_model.shadow`:
        the update against the exact average of the same replies and its best rank-``R``
        truncation, ``R`` the largest client rank), timed apart from the server's work, unless
        ``eval.shadow`` is off.

        With ``server.stream`` (:meth:`streams`), ``results`` are taken one at a time: each is
        screened, clipped and folded into a :class:`~glora.global_model.ModelAccumulator`, and
        none is kept, so the server's memory does not grow with the replies (an engine that
        passes a lazy iterable holds one at a time). A client answering twice then has its later
        replies rejected; the first was folded in when it came.

        Raises:
            AggregationError: fewer than ``server.min_clients`` valid results, or the round was
                not configured; ``state`` unchanged.
            InvalidUpdateError: the method rejected the round as a whole (naming the round and
                the layer); ``state`` unchanged.
        """
        t, number = self.round, self.round + 1
        if self._asked[0] != t:
            raise AggregationError(f"round {number} was not configured: call configure() first.")
        rejected = dict(rejected or {})
        for c, reason in rejected.items():  # what the engine could not decode
            log.warning("%s: round %d: rejected client %s: %s", self.label, number, c, reason)
        arrivals: list[tuple[Any, Any]] = []  # (client id, examples) of every result: DP account
        if self.streams():
            new_model, taken, schema, server_seconds = self._fold(results, rejected, arrivals)
            guarded: list[ClientReply] = []
        else:
            new_model, taken, schema, server_seconds, guarded = self._aggregate_list(
                results, rejected, arrivals)
        distances: dict[str, float] = {}
        if self.cfg.eval.shadow:  # analysis, not server work
            started = time.perf_counter()
            distances = shadow(new_model, guarded, max(self.ranks))
            distances["shadow_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        new_model = merge_base(new_model)  # the clients' merge into their frozen weights
        client_merge_seconds = time.perf_counter() - started
        clients = [c.client_id for c in taken]
        old = self.state.model
        bytes_down = sum(old.download_bytes(self.ranks[c], self.scaling(c)) for c in clients) \
            if old.layers else 0
        local = dict(self.state.local)
        local.update({c.client_id: c.kept for c in taken if c.kept is not None})
        record: dict[str, Any] = {
            "method": self.method, "label": self.label, "round": new_model.round,
            "clients": clients, "rejected": rejected,
            "train_loss": sum(c.train_loss for c in taken) / len(taken),
            "bytes_up": sum(c.bytes_up for c in taken),
            "bytes_down": bytes_down, "server_seconds": server_seconds,
            "client_merge_seconds": client_merge_seconds, **distances, **(extra or {})}
        spent = self._account(arrivals) if self.noise is not None else self.state.privacy
        if self.noise is not None:
            eps = {c: privacy.epsilon(h, self.cfg.train.dp_delta) for c, h in spent.items()}
            record.update(dp_epsilon=eps, dp_epsilon_max=max(eps.values()))
        self.state = replace(self.state, model=new_model, local=local, schema=schema,
                             history=[*self.state.history, record], privacy=spent)
        if self.evaluator and self.eval_due():
            record.update(self.evaluator.evaluate(new_model.total_delta(), new_model.head,
                                                  prefix="global_"))
            if self.spec.local:
                record.update(self.personalized())
            if self.cfg.eval.federated:
                record.update(self.federated())
        return record

    def streams(self) -> bool:
        """Whether this round's replies are folded in one at a time (``server.stream``, for a
        method with a stream rule, once the reply shapes are known)."""
        return self.cfg.server.stream and self.spec.stream is not None \
            and self.state.schema is not None

    def _aggregate_list(self, results: Iterable[Any], rejected: dict[Any, str],
                        arrivals: list[tuple[Any, Any]],
                        ) -> tuple[GlobalModel, list[_Taken], validation.ReplySchema | None,
                                   float, list[ClientReply]]:
        """The round from all its replies at once: the new model (not merged), the replies
        taken, their schema, the server's seconds and the replies as aggregated (guarded)."""
        accepted, schema = self._screen(list(results), rejected, arrivals)
        started = time.perf_counter()
        while True:
            self._enough(len(accepted), rejected)
            guarded = self._guard(accepted)
            try:
                new_model = aggregate_model(self.state.model, guarded, merge=False,
                                            device=self.device,
                                            threads=self.cfg.server.threads)
                break
            except InvalidUpdateError as err:  # one client's update the method cannot take
                if err.client is None:
                    raise InvalidUpdateError(f"round {self.round + 1}: {err.reason}", None,
                                             err.key) from None
                bad = guarded[err.client].client_id
                self._reject(rejected, bad, f"aggregation: {err}")
                accepted = [r for r in accepted if r.client_id != bad]
        taken = [self._taken(r) for r in accepted]
        return new_model, taken, schema, time.perf_counter() - started, guarded

    def _fold(self, results: Iterable[Any], rejected: dict[Any, str],
              arrivals: list[tuple[Any, Any]],
              ) -> tuple[GlobalModel, list[_Taken], validation.ReplySchema | None, float]:
        """The round from its replies taken one at a time (:meth:`streams`): as
        :meth:`_aggregate_list`, keeping only what the record needs of each reply."""
        schema = self.state.schema
        assert schema is not None
        acc = ModelAccumulator(self.state.model, self.device)
        taken: list[_Taken] = []
        folded: set[int] = set()
        seconds = 0.0
        for result in results:
            reply = self._typed(result, rejected, arrivals)
            if reply is None:
                continue
            c = reply.client_id
            if c in folded:
                self._reject(rejected, c, "client: answered more than once (the first reply was "
                                          "folded in as it came; `server.stream`)")
                continue
            if c in rejected:  # its first reply was rejected: keep that reason
                self._reject(rejected, c, f"{rejected[c]}; and it answered again")
                continue
            reason = self._reply_problem(reply, schema)
            if reason is not None:
                self._reject(rejected, c, reason)
                continue
            started = time.perf_counter()
            try:
                acc.add(self._guard([reply])[0])
            except InvalidUpdateError as err:
                self._reject(rejected, c, f"aggregation: {err}")
                continue
            finally:
                seconds += time.perf_counter() - started
            folded.add(c)
            taken.append(self._taken(reply))
        self._enough(len(taken), rejected)
        started = time.perf_counter()
        try:
            new_model = acc.result(merge=False)
        except InvalidUpdateError as err:
            raise InvalidUpdateError(f"round {self.round + 1}: {err.reason}", None,
                                     err.key) from None
        return new_model, taken, schema, seconds + time.perf_counter() - started

    def _enough(self, valid: int, rejected: dict[Any, str]) -> None:
        """Raise :class:`AggregationError` when ``valid`` replies are too few for a round."""
        srv, t = self.cfg.server, self.round
        if valid < srv.min_clients:
            raise AggregationError(
                f"{self.label}: round {t + 1}: {valid} valid replies of "
                f"{len(self._asked[1])} clients asked, `server.min_clients` = "
                f"{srv.min_clients} needed (rejected: {rejected or 'none'}); the state stays "
                f"at round {t}.")

    def _reject(self, rejected: dict[Any, str], client: Any, reason: str) -> None:
        rejected[client] = reason
        log.warning("%s: round %d: rejected client %s: %s", self.label, self.round + 1, client,
                    reason)

    def _typed(self, result: Any, rejected: dict[Any, str],
               arrivals: list[tuple[Any, Any]]) -> ClientReply | None:
        """``result`` as a :class:`ClientReply` of a client asked this round; ``None`` (and the
        reason in ``rejected``) where its types or its client are wrong."""
        arrivals.append((getattr(result, "client_id", None), getattr(result, "num_examples", None)))
        reason = validation.result_problem(result)
        if reason is None:
            reason = validation.unexpected_clients([result.client_id], self._asked[1]).get(
                result.client_id)
        if reason is not None:
            self._reject(rejected, validation.client_key(result), reason)
            return None
        return ClientReply(result.client_id, result.adapter, result.head, result.num_examples,
                           self.scaling(result.client_id),
                           {"train_loss": float(result.train_loss)})

    def _reply_problem(self, reply: ClientReply, schema: validation.ReplySchema) -> str | None:
        """Why ``reply`` fails the checks that look at it alone (shapes, rank, values, bounds)."""
        srv = self.cfg.server
        return validation.check_reply(
            reply, self.ranks[reply.client_id], schema,
            max_norm=None if srv.max_update_norm == "auto" else srv.max_update_norm,
            known_examples=(self.examples or {}).get(reply.client_id),
            max_examples=srv.max_examples)

    def _screen(self, results: list[Any], rejected: dict[Any, str],
                arrivals: list[tuple[Any, Any]],
                ) -> tuple[list[ClientReply], validation.ReplySchema | None]:
        """The valid replies among ``results`` and the shapes they follow; every other result
        goes into ``rejected`` (client id, or its repr where it is not one, -> reason)."""
        srv = self.cfg.server
        typed = [r for r in (self._typed(x, rejected, arrivals) for x in results) if r is not None]
        for c, reason in validation.unexpected_clients([r.client_id for r in typed],
                                                       self._asked[1]).items():
            self._reject(rejected, c, reason)
        replies = [r for r in typed if r.client_id not in rejected]
        schema = self.state.schema or validation.majority_schema(replies)
        accepted = []
        for r in replies:
            reason = "keys: no reply of this round follows one shape" if schema is None else \
                self._reply_problem(r, schema)
            if reason is None:
                accepted.append(r)
            else:
                self._reject(rejected, r.client_id, reason)
        if srv.max_update_norm == "auto":
            outliers = validation.norm_outliers(accepted, schema, srv.norm_factor)
            for c, reason in outliers.items():
                self._reject(rejected, c, reason)
            accepted = [r for r in accepted if r.client_id not in outliers]
        return accepted, schema

    def _account(self, arrivals: list[tuple[Any, Any]]) -> dict[int, list[tuple[float, float, int]]]:
        """The privacy account with this round added for every asked client that replied: it
        trained, whether or not its reply was used."""
        spent = {c: list(h) for c, h in self.state.privacy.items()}
        train = self.cfg.train
        for c, claimed in arrivals:
            if not isinstance(c, int) or c not in self._asked[1]:
                continue
            # what the client holds, where known, not what it claims
            n = (self.examples or {}).get(c, claimed)
            if isinstance(n, int) and n > 0:
                rate = min(1.0, train.batch_size / n)
                spent.setdefault(c, []).append((float(self.noise), rate, train.local_steps))
        return spent

    def _guard(self, replies: list[ClientReply]) -> list[ClientReply]:
        """The robust safeguards of ``server`` (off by default) applied to valid replies.

        Clipping scales ``B``, or ``A`` where a method does not upload ``B`` (FedSA-LoRA keeps it
        on the client), so the clipped factor is the one aggregated.
        """
        srv = self.cfg.server
        if srv.clip_norm is not None:
            replies = robust.clip_updates(replies, srv.clip_norm,
                                          "B" if "B" in self.spec.uploads_in(self.round) else "A")
        if srv.max_client_weight is not None:
            replies = robust.cap_weights(replies, srv.max_client_weight)
        return replies

    def _taken(self, reply: ClientReply) -> _Taken:
        """What the record and the clients' kept state need of a reply taken into the round."""
        kept = None
        if self.spec.local:  # the parts the method keeps on the client (FedSA-LoRA: B and head)
            kept = {k: v for k, v in reply.adapter.items() if k.endswith(LORA_B)} \
                if "B" in self.spec.local else {}
            if "head" in self.spec.local:
                kept.update(reply.head)
        return _Taken(reply.client_id, reply.metrics["train_loss"],
                      upload_bytes(self.method, reply, self.round), kept)

    def federated(self) -> dict[str, Any]:
        """The global model (and, where a method keeps parts, each client's own model:
        ``federated_personal_*``) scored by every client on its own test split, as Flower's
        nodes score them (:func:`federated_means`)."""
        assert self.evaluator is not None
        model = self.state.model
        deltas, scores = model.total_delta(), []
        for c in range(self.cfg.data.num_clients):
            score = self.evaluator.evaluate(deltas, model.head, FEDERATED, client=c)
            if c in self.state.local:
                score.update(self.evaluator.evaluate(*self.personal_model(c),
                                                     FEDERATED + "personal_", client=c))
            scores.append((score, self.evaluator.test_size(c)))
        return federated_means(scores)

    def personal_model(self, client: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(dense update per layer, head)`` of ``client``'s own model: the global model with
        the parts it keeps (FedSA-LoRA's ``B`` and head)."""
        model, local, s = self.state.model, self.state.local[client], self.scaling(client)
        layers, _ = split_adapter(model.start_adapter(self.ranks[client], s, local) or {})
        deltas = {k: s * B @ A for k, (B, A) in layers.items()}
        for k, b in model.base.items():
            deltas[k] = deltas[k] + b if k in deltas else b
        return deltas, model.start_head(local) or model.head

    def personalized(self) -> dict[str, float]:
        """Mean over clients of each client's own model (global + local parts) on its test split."""
        assert self.evaluator is not None
        scores = [self.evaluator.evaluate(*self.personal_model(c), prefix="personal_", client=c)
                  for c in sorted(self.state.local)]
        return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]} if scores else {}
