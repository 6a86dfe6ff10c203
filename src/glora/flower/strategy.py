"""A Flower strategy that runs a :class:`~glora.federation.server.FederatedServer` on a real
federation.

Every SuperNode serves one data partition (its ``partition-id`` node config), that is one glora
client, and holds only that data. The strategy asks new nodes for their partition and example
count with a query message (the count caps what the node's replies may claim), sends each node
the task of its own client (the start adapter for its rank, head, base deltas, seeds,
hyper-parameters), aggregates the replies with :meth:`FederatedServer.aggregate` (what the
simulator calls) and checkpoints after every round. When an evaluation is due (``eval.every``),
every node scores the global model on its own test split and the round's record gets their
means weighted by test examples (``federated_*``, as the simulator's ``eval.federated``).

Failures: a node that errs or does not answer within the timeout is left out of its round and
reported (``missing_clients`` in the round's record, and a warning); the server screens the
replies that came (``rejected`` in the record). With fewer than ``server.min_clients`` valid
replies the round is sent again, with the same tasks (every seed is a function of seed, round and
client), up to ``server.retries`` times, as in the simulator. The server state only changes when
a round aggregated completely.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from glora.contract import TrainResult
from glora.errors import AggregationError
from glora.federation import plan, rounds
from glora.federation.records import EVAL_PREFIXES, FEDERATED
from glora.federation.server import FederatedServer, federated_means
from glora.flower import codec
from glora.validation import Undecodable


#: Evaluation keys of the server's own evaluation (held-out set, FedSA-LoRA's personal models).
SERVER_EVAL = tuple(p for p in EVAL_PREFIXES if p != FEDERATED)


def metric_record(record: dict[str, Any], prefixes: tuple[str, ...] | None = None,
                  ) -> MetricRecord:
    """The numeric entries of a round record whose keys start with ``prefixes`` (``None``: the
    training entries, every key that is no evaluation)."""
    return MetricRecord({k: v for k, v in record.items() if _numeric(v) and (
        not k.startswith(EVAL_PREFIXES) if prefixes is None else k.startswith(prefixes))})


def _numeric(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class GloraStrategy(Strategy):
    """Rounds of a :class:`FederatedServer` over a Flower :class:`Grid`.

    Args:
        server: the server whose state the rounds advance (load a checkpoint into it to resume);
            its config's ``server.min_clients`` and ``server.retries`` rule failed rounds.
        out_dir: where ``checkpoint.pt`` and ``metrics.jsonl`` are written after every round.
        poll_interval: seconds between pulls of replies.

    >>> strategy = GloraStrategy(FederatedServer(cfg, "glora", prepare(cfg)), Path("runs/x/glora"))
    >>> strategy.start(grid, timeout=600)  # in a ServerApp's main
    """

    def __init__(self, server: FederatedServer, out_dir: Path, poll_interval: float = 0.2) -> None:
        self.server, self.out, self.poll_interval = server, Path(out_dir), poll_interval
        self.timeout = 600.0  # seconds per exchange; set by start()
        self.partitions: dict[int, int] = {}  # node id -> client id
        self._silent: set[int] = set()  # nodes that did not answer their partition query
        self._sampled: list[int] = []  # this round's clients
        self._sent: dict[str, int] = {}  # message id -> node id, of the last exchange
        self._started = 0.0
        self._attempt = 0

    @property
    def checkpoint_path(self) -> Path:
        return self.out / rounds.CHECKPOINT

    def summary(self) -> None:
        log(INFO, "\t├──> glora: %s, %d clients, ranks %s", self.server.label,
            self.server.cfg.data.num_clients, self.server.ranks)
        log(INFO, "\t└──> Minimum valid replies per round: %d, retries: %d, timeout: %g s",
            self.server.cfg.server.min_clients, self.server.cfg.server.retries, self.timeout)

    # -- the round loop ------------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None,
              num_rounds: int | None = None, timeout: float = 600.0,
              train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              ) -> Result:
        """Run rounds until the server reached ``num_rounds`` (default: ``train.rounds``).

        ``initial_arrays`` is not used: the model is the server's state (a resumed run continues
        from it). ``timeout`` bounds each exchange with the nodes. Evaluation is federated (the
        nodes') or the server's evaluator, so ``evaluate_config`` and ``evaluate_fn`` must stay
        ``None``.

        Raises:
            AggregationError: a round had too few valid replies after every retry; the state and
                the checkpoint stay at the previous round.
        """
        if evaluate_config is not None or evaluate_fn is not None:
            raise ValueError("`evaluate_config` and `evaluate_fn` are not used: the nodes "
                             "evaluate the global model when `eval.every` says.")
        last = self.server.cfg.train.rounds if num_rounds is None else num_rounds
        self.timeout = timeout
        log(INFO, "Starting %s strategy:", type(self).__name__)
        self.summary()
        result = Result()
        first = True
        if self._evaluation_lost():
            self._wait_for_nodes(grid, everyone=True)
            first = False
            record = self.server.state.history[-1]
            record.update(self._evaluate(grid, self.server.round))
            rounds.persist(self.server, self.out)
            result.evaluate_metrics_clientapp[self.server.round] = metric_record(record,
                                                                                 (FEDERATED,))
        while self.server.round < last:
            t = self.server.round + 1
            log(INFO, "")
            log(INFO, "[ROUND %s/%s]", t, last)

            def attempt(n: int, t: int = t, everyone: bool = first) -> dict[str, Any]:
                self._attempt = n
                self._wait_for_nodes(grid, everyone=everyone)
                messages = self.configure_train(t, ArrayRecord(), train_config or ConfigRecord(),
                                                grid)
                return self._aggregate(t, self._exchange(grid, messages).values())

            record = rounds.retry_round(self.server, attempt, self.checkpoint_path,
                                        " Start the missing SuperNodes and resume.")
            first = False
            result.train_metrics_clientapp[t] = metric_record(record)
            if self.server.eval_due():
                record.update(self._evaluate(grid, t))
                rounds.persist(self.server, self.out)
                result.evaluate_metrics_clientapp[t] = metric_record(record, (FEDERATED,))
            if any(k.startswith(SERVER_EVAL) for k in record):
                result.evaluate_metrics_serverapp[t] = metric_record(record, SERVER_EVAL)
        result.arrays = codec.global_arrays(self.server.state.model)
        return result

    def _evaluation_lost(self) -> bool:
        """Whether the checkpoint's last round was due an evaluation that has no federated
        metrics: a run stopped while the nodes evaluated (or none of them could). A resumed run
        evaluates that round before it trains the next."""
        history = self.server.state.history
        return bool(history) and self.server.eval_due() and \
            not any(k.startswith(FEDERATED) for k in history[-1])

    # -- Strategy hooks ------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> list[Message]:
        """One message per sampled client whose node is known, holding that client's task."""
        node_of = {c: n for n, c in self.partitions.items()}
        self._sampled = plan.sample_clients(self.server.cfg, self.server.round)
        tasks = self.server.configure([c for c in self._sampled if c in node_of])
        config["server-round"] = server_round
        messages = []
        for task in tasks:
            content = codec.encode_task(task)
            content["config"] = config
            messages.append(Message(content, node_of[task.client_id], MessageType.TRAIN,
                                    ttl=self.timeout, group_id=str(server_round)))
        self._started = time.perf_counter()
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies; ``(None, None)`` when too few were valid (send the round again).

        The global model stays in ``server.state`` (and the checkpoint), so no arrays are
        returned; the metrics are the round record's numeric entries.
        """
        try:
            record = self._aggregate(server_round, replies)
        except AggregationError as err:
            log(WARNING, "round %d, attempt %d: %s", server_round, self._attempt, err)
            return None, None
        return None, metric_record(record)

    def _aggregate(self, server_round: int, replies: Iterable[Message]) -> dict[str, Any]:
        """Decode the replies, aggregate the valid ones, persist; return the round's record.

        Replies are decoded one at a time, in client order, as the server takes them: with
        ``server.stream`` only one decoded reply exists at a time besides the messages.

        Raises:
            AggregationError: too few valid replies; the state is unchanged.
        """
        seconds = time.perf_counter() - self._started
        by_client: dict[int, Message] = {}
        for reply in replies:
            node = self._sent.get(reply.metadata.reply_to_message_id)
            client = self.partitions.get(node) if node is not None else None
            if reply.has_error():
                log(WARNING, "round %d: client %s failed: %s", server_round, client,
                    reply.error.reason)
            else:
                by_client[client] = reply

        def results() -> Iterator[TrainResult | Undecodable]:
            for client in sorted(by_client, key=lambda c: (c is None, c or 0)):
                try:
                    result = codec.decode_result(by_client[client].content)
                except Exception as err:  # noqa: BLE001 - a bad reply is a rejection, never a crash
                    yield Undecodable(client, f"decode: {err}")
                    continue
                if result.client_id != client:
                    yield Undecodable(client, f"client: the node of client {client} answered "
                                              f"for client {result.client_id!r}")
                    continue
                yield result

        missing = sorted(set(self._sampled) - set(by_client))
        extra = {"train_seconds": seconds, "missing_clients": missing, "attempt": self._attempt}
        record = self.server.aggregate(results(), extra)
        left_out = sorted(set(self._sampled) - set(record["clients"]))
        if left_out:
            log(WARNING, "round %d: aggregated without clients %s (missing: %s, rejected: %s)",
                server_round, left_out, missing,
                sorted(map(str, record.get("rejected", {}))))
        rounds.persist(self.server, self.out)
        return record

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> list[Message]:
        """One message per node that serves a partition, holding the global model (the server's
        state; ``arrays`` is not used) and, where the method keeps parts on the client
        (FedSA-LoRA), the node's own model."""
        model = codec.global_arrays(self.server.state.model)
        config["server-round"] = server_round
        messages = []
        for node, client in sorted(self.partitions.items()):
            content = RecordDict({codec.MODEL: model, "config": config})
            if client in self.server.state.local:
                content[codec.PERSONAL] = codec.model_arrays(*self.server.personal_model(client))
            messages.append(Message(content, node, MessageType.EVALUATE, ttl=self.timeout,
                                    group_id=str(server_round)))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message],
                           ) -> MetricRecord | None:
        """The nodes' scores as means weighted by their test examples (``federated_*`` and
        ``federated_examples``); a failed or malformed reply is left out with a warning."""
        scores = []
        for reply in replies:
            node = self._sent.get(reply.metadata.reply_to_message_id)
            if reply.has_error():
                log(WARNING, "round %d: node %s failed to evaluate: %s", server_round, node,
                    reply.error.reason)
                continue
            try:
                metrics, examples = codec.decode_scores(reply.content)
            except codec.CodecError as err:
                log(WARNING, "round %d: node %s: %s; left out of the evaluation.", server_round,
                    node, err)
                continue
            scores.append(({FEDERATED + k: v for k, v in metrics.items()}, examples))
        means = federated_means(scores)
        return MetricRecord({**means, FEDERATED + "clients": len(scores)}) if means else None

    def _evaluate(self, grid: Grid, server_round: int) -> dict[str, Any]:
        """Federated evaluation of the global model after ``server_round``."""
        messages = self.configure_evaluate(server_round, ArrayRecord(), ConfigRecord(), grid)
        metrics = self.aggregate_evaluate(server_round, self._exchange(grid, messages).values())
        return {} if metrics is None else dict(metrics)

    # -- nodes and messages --------------------------------------------------------------------
    def _wait_for_nodes(self, grid: Grid, everyone: bool) -> None:
        """Learn the nodes' partitions until the round's clients (or enough of them) have one."""
        sampled = plan.sample_clients(self.server.cfg, self.server.round)
        needed = len(sampled) if everyone else min(self.server.cfg.server.min_clients, len(sampled))
        deadline = time.monotonic() + self.timeout
        ask_silent = False
        while True:
            self._discover(grid, ask_silent)
            present = set(self.partitions.values()) & set(sampled)
            if len(present) >= needed or time.monotonic() > deadline:
                return
            log(INFO, "waiting for the nodes of clients %s", sorted(set(sampled) - present))
            ask_silent = True
            time.sleep(1.0)

    def _discover(self, grid: Grid, ask_silent: bool) -> None:
        """Ask new nodes for their partition id; forget nodes that left.

        Nodes that did not answer an earlier query are asked again only with ``ask_silent``
        (when a round lacks clients), so a hung node does not cost every round a timeout.
        """
        online = set(grid.get_node_ids())
        self.partitions = {n: c for n, c in self.partitions.items() if n in online}
        self._silent &= online
        unknown = sorted(online - set(self.partitions) - (set() if ask_silent else self._silent))
        if not unknown:
            return
        queries = [Message(RecordDict(), n, MessageType.QUERY, ttl=self.timeout) for n in unknown]
        replies = self._exchange(grid, queries)
        n_clients = self.server.cfg.data.num_clients
        for node in unknown:
            reply = replies.get(node)
            if reply is None:
                log(WARNING, "node %d: no answer to the partition query.", node)
                self._silent.add(node)
                continue
            self._silent.discard(node)
            if reply.has_error():
                log(WARNING, "node %d: partition query failed: %s", node, reply.error.reason)
                continue
            try:
                pid, num_partitions, examples = codec.decode_node(reply.content)
            except codec.CodecError as err:
                log(WARNING, "node %d: %s", node, err)
                continue
            if num_partitions not in (None, n_clients) or not 0 <= pid < n_clients:
                log(WARNING, "node %d: partition-id=%d num-partitions=%s does not fit "
                    "data.num_clients=%d; ignored.", node, pid, num_partitions, n_clients)
            elif pid in self.partitions.values():
                log(WARNING, "node %d: partition %d is already served by another node; ignored.",
                    node, pid)
            else:
                self.partitions[node] = pid
                if self.server.examples is not None:
                    self.server.examples[pid] = examples
        log(INFO, "nodes -> clients: %s", self.partitions)

    def _exchange(self, grid: Grid, messages: list[Message]) -> dict[int, Message]:
        """Push ``messages``; pull until every node replied or the timeout passed.

        Returns the replies by destination node id, and keeps ``_sent`` (message id -> node id)
        to tell whose an error reply of the SuperLink is. Polls every ``poll_interval`` seconds
        (``Grid.send_and_receive`` sleeps 3 s between pulls, which would dominate short rounds).
        """
        ids = list(grid.push_messages(messages))
        self._sent = {mid: m.metadata.dst_node_id
                      for mid, m in zip(ids, messages, strict=True) if mid}
        pending, replies = set(self._sent), {}
        deadline = time.monotonic() + self.timeout
        while pending and time.monotonic() < deadline:
            for reply in grid.pull_messages(sorted(pending)):
                pending.discard(reply.metadata.reply_to_message_id)
                replies[self._sent[reply.metadata.reply_to_message_id]] = reply
            if pending:
                time.sleep(self.poll_interval)
        return replies
