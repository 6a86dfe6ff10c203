"""Screening of client replies, robust safeguards and fuzzing of the aggregation entry points.

The fuzz tests allow exactly two outcomes: a correct result, or one of the project's typed errors.
"""

from __future__ import annotations

import gc
import math
import weakref
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import glora
from glora.aggregation.base import weights
from glora.config import load_config
from glora.errors import AggregationError, ConfigError, GloraError
from glora.global_model import LORA_A, LORA_B, ClientReply, GlobalModel, aggregate_model
from glora.robust import cap_weights, capped_shares, clip_updates
from glora.federation.server import FederatedServer
from glora.validation import (CHECKS, ReplySchema, check_reply, client_key, majority_schema,
                              unexpected_clients, update_norm)

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def randn(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64) * scale


# -- fuzzing glora.aggregate ---------------------------------------------------------------------
@st.composite
def update_lists(draw) -> list[glora.ClientUpdate]:
    """Lists of updates, each field valid or (when the list is not ``valid``) anything."""
    valid = draw(st.booleans())
    pick = (lambda good, bad: draw(st.sampled_from(list(good)))) if valid else \
        (lambda good, bad: draw(st.sampled_from([*good, *bad])))
    d_out, d_in = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    updates = []
    for _ in range(draw(st.integers(1 if valid else 0, 4))):
        rank = draw(st.integers(1, min(d_out, d_in, 4)))
        b_shape = (pick([d_out], [d_out + 1]), rank)
        a_shape = (pick([rank], [rank + 1, 0]), pick([d_in], [d_in + 2]))
        dtype = pick(FLOATS, [torch.int32])
        scale = pick([1e-3, 1.0, 1e3], [1e19])
        seed = draw(st.integers(0, 2**31))
        B, A = randn(b_shape, seed, scale), randn(a_shape, seed + 1, scale)
        if pick([False, False, True], []):  # a zero update (a fresh LoRA init)
            B = torch.zeros_like(B)
        poison = pick([None], ["nan", "inf"])
        if poison and B.numel():
            B.view(-1)[seed % B.numel()] = float(poison)
        updates.append(glora.ClientUpdate(
            B.to(dtype), A.to(dtype), pick([1, 7, 100], [0, -3, 2.5, True]),
            pick([0.5, 2.0, 16.0], [0.0, -1.0, float("nan"), 1e30])))
    return updates


def average(updates: list[glora.ClientUpdate]) -> torch.Tensor:
    """``sum_i p_i s_i B_i A_i`` in float64."""
    return sum(p * u.scaling * u.B.double() @ u.A.double()
               for p, u in zip(weights(updates), updates))


@FUZZ
@given(updates=update_lists(), method=st.sampled_from(glora.methods()))
def test_aggregate_gives_a_correct_result_or_a_typed_error(updates, method):
    try:
        state = glora.aggregate(method, updates)
    except GloraError as err:
        event(f"typed error: {type(err).__name__}")
        return
    event("result")
    d_out, d_in = updates[0].B.shape[0], updates[0].A.shape[1]
    delta = state.delta()
    assert delta.shape == (d_out, d_in) and delta.dtype in (torch.float32, torch.float64)
    assert all(bool(torch.isfinite(t).all()) for t in state.tensors().values())
    assert bool(torch.isfinite(delta).all())
    # Exact results, to the dtype's precision relative to the clients' magnitudes.
    size = sum(p * u.scaling * float(u.B.double().norm() * u.A.double().norm())
               for p, u in zip(weights(updates), updates))
    tol = (1e-4 if delta.dtype == torch.float32 else 1e-10) * size + 1e-30
    if method == "glora":
        U = state.U.double()
        assert torch.allclose(U.mT @ U, torch.eye(U.shape[1], dtype=torch.float64), atol=1e-4)
        assert float((delta.double() - U @ (U.mT @ average(updates))).norm()) <= tol
    if method == "flora":
        assert float((delta.double() - average(updates)).norm()) <= tol


# -- fuzzing the reply checks --------------------------------------------------------------------
#: Mutation -> the checks that may name it.
MUTATIONS = {"drop_key": {"keys"}, "extra_key": {"keys"}, "drop_head": {"keys"},
             "int": {"dtype"}, "not_tensor": {"dtype"}, "rank": {"shape"}, "head_shape": {"shape"},
             "nan": {"finite"}, "inf": {"finite"}, "zero_examples": {"examples"},
             "negative_examples": {"examples"}, "float_examples": {"examples"},
             "bool_examples": {"examples"}, "too_many_examples": {"examples"},
             "scale": {"norm"}, "half": set()}


@st.composite
def replies(draw) -> tuple[ClientReply, ReplySchema, int, float | None, set[str]]:
    """A valid reply of a random schema with random mutations, and the checks that may fail."""
    seed = draw(st.integers(0, 2**31))
    layers = {f"base_model.model.layer{i}": (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
              for i in range(draw(st.integers(1, 2)))}
    head = {f"base_model.model.classifier.p{i}": tuple(draw(st.lists(st.integers(1, 3),
                                                                      min_size=1, max_size=2)))
            for i in range(draw(st.integers(1, 2)))}
    schema = ReplySchema(layers, head)
    rank = draw(st.integers(1, min(min(s) for s in layers.values())))
    adapter = {k: randn(s, seed + i, 0.1).float()
               for i, (k, s) in enumerate(schema.adapter_shapes(rank).items())}
    heads = {k: randn(s, seed - i).float() for i, (k, s) in enumerate(head.items())}
    known, n = 50, draw(st.integers(1, 50))
    max_norm = draw(st.sampled_from([None, 1e3]))
    mutations = draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=3, unique=True))
    key = draw(st.sampled_from(sorted(adapter)))
    hkey = draw(st.sampled_from(sorted(heads)))
    expected: set[str] = set()
    for m in sorted(mutations, key=lambda m: m != "half"):  # half first: it must not overflow
        tensor = isinstance(adapter.get(key), torch.Tensor)
        if m == "drop_key" and key in adapter:
            del adapter[key]
        elif m == "extra_key":
            adapter["base_model.model.other" + LORA_A] = torch.zeros(rank, 2)
        elif m == "drop_head":
            del heads[hkey]
        elif m == "int" and tensor:
            adapter[key] = adapter[key].int()
        elif m == "not_tensor" and tensor:
            adapter[key] = adapter[key].tolist()
        elif m == "rank":
            prefix = next(iter(layers))
            adapter[prefix + LORA_A] = torch.ones(rank + 1, layers[prefix][1])
        elif m == "head_shape" and hkey in heads:
            heads[hkey] = torch.zeros(heads[hkey].shape[0] + 1, *heads[hkey].shape[1:])
        elif m in ("nan", "inf") and tensor:
            adapter[key] = adapter[key].double().clone()
            adapter[key].view(-1)[0] = float(m)
        elif m == "half" and tensor:
            adapter[key] = adapter[key].half()
        elif m == "scale":
            adapter = {k: v.double() * 1e6 if k.endswith(LORA_B) and isinstance(v, torch.Tensor)
                       and v.is_floating_point() else v for k, v in adapter.items()}
            if max_norm is not None and largest_norm(adapter, rank) > max_norm:
                expected.add("norm")
            continue
        elif m.endswith("examples"):
            n = {"zero": 0, "negative": -n, "float": float(n), "bool": True,
                 "too": known + 1}[m.split("_")[0]]
        else:
            continue  # not applicable to this reply
        expected |= MUTATIONS[m]
    return ClientReply(0, adapter, heads, n, 2.0 / rank), schema, rank, max_norm, expected


def largest_norm(adapter: dict, rank: int) -> float:
    """The largest dense ``||s B A||_F`` over the layers whose factors are float matrices."""
    norms = [0.0]
    for k, B in adapter.items():
        A = adapter.get(k.removesuffix(LORA_B) + LORA_A)
        if k.endswith(LORA_B) and all(isinstance(t, torch.Tensor) and t.is_floating_point()
                                      for t in (A, B)) and B.shape[1] == A.shape[0]:
            norms.append(float((2.0 / rank * B.double() @ A.double()).norm()))
    return max(norms)


@FUZZ
@given(case=replies())
def test_reply_checks_reject_exactly_the_broken_replies(case):
    reply, schema, rank, max_norm, expected = case
    reason = check_reply(reply, rank, schema, known_examples=50, max_norm=max_norm)
    if expected:
        assert reason is not None and reason.split(":")[0] in expected, (reason, expected)
        assert reason.split(":")[0] in CHECKS
        return
    assert reason is None, reason
    other = ClientReply(1, {k: v.float() for k, v in reply.adapter.items()}, reply.head, 5,
                        reply.scaling)
    model = aggregate_model(GlobalModel("glora"), [reply, other])
    assert all(bool(torch.isfinite(d).all()) for d in model.total_delta().values())


@FUZZ
@given(seed=st.integers(0, 2**31), shape=st.tuples(st.integers(1, 6), st.integers(1, 4),
                                                    st.integers(1, 6)),
       dtype=st.sampled_from(FLOATS), scaling=st.floats(0.1, 10))
def test_update_norm_is_the_dense_norm(seed, shape, dtype, scaling):
    B, A = randn(shape[:2], seed).to(dtype), randn(shape[1:], seed + 1).to(dtype)
    dense = float((scaling * B.double() @ A.double()).norm())
    assert math.isclose(update_norm(B, A, scaling), dense, rel_tol=1e-9, abs_tol=1e-12)


def test_unexpected_and_duplicate_clients_are_named():
    assert unexpected_clients([0, 2, 2, 5], {0, 1, 2}) == {
        2: "client: answered 2 times", 5: "client: not asked to train in this round (asked: "
                                          "[0, 1, 2])"}


def test_majority_schema_outvotes_a_deviant_first_reply():
    good = {"p" + LORA_B: torch.zeros(4, 2), "p" + LORA_A: torch.zeros(2, 3)}
    bad = {"p" + LORA_B: torch.zeros(5, 2), "p" + LORA_A: torch.zeros(2, 3)}
    replies = [ClientReply(i, a, {}, 1, 1.0) for i, a in enumerate([bad, good, good])]
    assert majority_schema(replies) == ReplySchema({"p": (4, 3)}, {})
    assert majority_schema([ClientReply(0, {"p" + LORA_B: torch.zeros(4, 2)}, {}, 1, 1.0)]) is None


# -- robust safeguards ---------------------------------------------------------------------------
@FUZZ
@given(counts=st.lists(st.integers(1, 10**6), min_size=1, max_size=8),
       cap=st.floats(0.01, 1.0))
def test_capped_shares_sum_to_one_and_stay_below_the_cap(counts, cap):
    shares = capped_shares(counts, cap)
    assert sum(shares) == 1
    if Fraction(cap) * len(counts) <= 1:  # exactly: 0.2 * 5 is 1.0 in floats, above 1 exactly
        assert len(set(shares)) == 1
        return
    assert all(s <= Fraction(cap) for s in shares)
    free = [(n, s) for n, s in zip(counts, shares) if s < Fraction(cap)]
    assert len({s / n for n, s in free}) <= 1  # the uncapped keep their proportions
    replies = [ClientReply(i, {}, {}, n, 1.0) for i, n in enumerate(counts)]
    capped = cap_weights(replies, cap)
    assert [Fraction(w) for w in weights(capped)] == [Fraction(float(s)) for s in shares]


def test_clipping_scales_only_large_updates_to_the_bound():
    B, A = randn((6, 2), 0), randn((2, 5), 1)
    small = ClientReply(0, {"p" + LORA_B: B, "p" + LORA_A: A}, {}, 1, 1.0)
    large = ClientReply(1, {"p" + LORA_B: 1e6 * B, "p" + LORA_A: A}, {}, 1, 1.0)
    bound = 2 * update_norm(B, A, 1.0)
    for factor in ("B", "A"):
        out = clip_updates([small, large], bound, factor)
        assert out[0] is small
        clipped = out[1].adapter
        assert math.isclose(update_norm(clipped["p" + LORA_B], clipped["p" + LORA_A], 1.0), bound)
        kept = LORA_A if factor == "B" else LORA_B
        assert clipped["p" + kept] is large.adapter["p" + kept]


# -- the server ----------------------------------------------------------------------------------
def result(client: int, rank: int, d: int = 6, n: int = 10, scale: float = 1.0):
    """A ``TrainResult``-like reply; its head is filled with the client id."""
    adapter = {"p" + LORA_B: scale * randn((d, rank), client), "p" + LORA_A: randn((rank, 5), 9)}
    return SimpleNamespace(client_id=client, adapter=adapter,
                           head={"h": torch.full((2,), float(client))}, num_examples=n,
                           train_loss=0.5)


def server(*overrides: str) -> FederatedServer:
    """A GLoRA server of 4 clients at rank 2, without the default relative norm bound (tests of
    other checks must not have their outliers caught by it first)."""
    cfg = load_config(None, ["data.num_clients=4", "lora.ranks=[2]", "methods=[glora]",
                             "server.max_update_norm=null", *overrides])
    return FederatedServer(cfg, "glora", None)


def test_server_learns_the_shapes_from_the_majority_and_rejects_the_rest(caplog):
    srv = server()
    srv.configure([0, 1, 2, 3])
    record = srv.aggregate([result(0, 2, d=7), result(1, 2), result(2, 2), result(3, 3),
                            result(9, 2)])
    assert record["clients"] == [1, 2]
    assert set(record["rejected"]) == {0, 3, 9}
    assert record["rejected"][0].startswith("shape:") and record["rejected"][3].startswith("shape:")
    assert srv.state.schema == ReplySchema({"p": (6, 5)}, {"h": (2,)})
    assert "round 1: rejected client 0: shape:" in caplog.text


def test_too_few_valid_replies_leave_the_server_unchanged():
    srv = server("server.min_clients=2")
    srv.configure([0, 1])
    before = srv.state
    with pytest.raises(AggregationError, match=r"round 1: 1 valid replies of 2 .*min_clients"):
        srv.aggregate([result(0, 2), result(1, 2, n=0)])
    assert srv.state is before and srv.round == 0
    with pytest.raises(AggregationError, match="not configured"):
        server().aggregate([result(0, 2)])


def test_server_clips_updates_and_caps_weights():
    plain, guarded = server(), server("server.clip_norm=1.0", "server.max_client_weight=0.5")
    results = [result(0, 2, n=1, scale=100.0), result(1, 2, n=1), result(2, 2, n=98)]
    for srv in (plain, guarded):
        srv.configure([0, 1, 2])
        srv.aggregate(results)
    assert float(plain.state.model.total_delta()["p"].norm()) > 1.0
    assert float(guarded.state.model.total_delta()["p"].norm()) <= 1.0 + 1e-6
    # Heads hold the client id: client 2 weighs 1/2 instead of 98/100, the others 1/4 each.
    assert torch.allclose(plain.state.model.head["h"], torch.full((2,), 1.97))
    assert torch.allclose(guarded.state.model.head["h"], torch.full((2,), 1.25))


@pytest.mark.parametrize("break_it, key, reason", [
    (lambda r: setattr(r, "client_id", 2.0), "2.0", "client: `client_id` must be an integer"),
    (lambda r: setattr(r, "train_loss", [0.1, 0.2]), 2, "train_loss: must be a finite number"),
    (lambda r: setattr(r, "train_loss", float("nan")), 2, "train_loss: must be a finite number"),
    (lambda r: setattr(r, "head", None), 2, "keys: the head is a NoneType"),
    (lambda r: r.adapter.update({"p" + LORA_B: 1e37 * r.adapter["p" + LORA_B]}), 2,
     "aggregation: "),  # finite, but s B A overflows float32
])
def test_a_broken_reply_is_a_rejection_and_the_round_goes_on_without_it(break_it, key, reason):
    """Each of these crashed a round before; now the state equals the valid clients' alone."""
    replies = [result(c, 2) for c in range(3)]
    for r in replies:
        r.adapter = {k: v.float() for k, v in r.adapter.items()}
    break_it(replies[2])
    srv, clean = server(), server()
    srv.configure([0, 1, 2])
    clean.configure([0, 1, 2])
    record = srv.aggregate(replies)
    assert record["clients"] == [0, 1] and record["rejected"][key].startswith(reason)
    clean.aggregate(replies[:2])
    assert torch.equal(srv.state.model.total_delta()["p"], clean.state.model.total_delta()["p"])


def test_the_default_norm_bound_rejects_an_update_far_above_the_round_s_median():
    srv = server("server.max_update_norm=auto", "server.norm_factor=10")
    srv.configure([0, 1, 2, 3])
    big = result(3, 2, scale=50.0)
    record = srv.aggregate([result(0, 2), result(1, 2), result(2, 2), big])
    assert record["clients"] == [0, 1, 2]
    assert record["rejected"][3].startswith("norm: largest layer ||s B A||_F = ")
    assert "10 times the round's median" in record["rejected"][3]
    honest = server("server.max_update_norm=auto")
    honest.configure([0, 1, 2, 3])
    assert honest.aggregate([result(c, 2, scale=2.0 if c else 1.0) for c in range(4)])[
        "rejected"] == {}  # a factor of 2 is no outlier
    with pytest.raises(ConfigError, match="`server.norm_factor` must be a number above 1"):
        load_config(None, ["server.norm_factor=1"])
    with pytest.raises(ConfigError, match="must be a positive number, `auto` or null"):
        load_config(None, ["server.max_update_norm=always"])


def test_decode_failures_the_engine_found_are_recorded_as_rejections():
    srv = server()
    srv.configure([0, 1, 2])
    record = srv.aggregate([result(0, 2), result(1, 2)], rejected={2: "decode: bad array"})
    assert record["rejected"] == {2: "decode: bad array"} and record["clients"] == [0, 1]


def folded_references(stream: bool, clients: int = 30) -> tuple[list[int], FederatedServer]:
    """A FedIT round fed by a generator; for each reply, how many earlier replies (the one just
    before aside: the server's loop still names it) were alive when it was made."""
    cfg = load_config(None, [f"data.num_clients={clients}", "lora.ranks=[2]", "methods=[fedit]",
                             *STREAM[1:], f"server.stream={str(stream).lower()}"])
    srv = FederatedServer(cfg, "fedit", None, SCHEMA)
    srv.configure(list(range(clients)))
    refs: list[weakref.ref] = []
    alive: list[int] = []

    def replies():
        for c in range(clients):
            gc.collect()
            alive.append(sum(ref() is not None for ref in refs[:-1]))
            r = result(c, 2, n=10 + c)
            refs.append(weakref.ref(r.adapter["p" + LORA_B]))
            yield r

    srv.aggregate(replies())
    return alive, srv


def test_a_streaming_round_keeps_none_of_the_replies_it_folded_in():
    """``server.stream``: the server's memory does not grow with the replies; the list path
    (the control) holds every one until the round is aggregated. Both give the same round."""
    streamed, stream_srv = folded_references(True)
    listed, list_srv = folded_references(False)
    assert max(streamed) == 0 and listed == [max(0, c - 1) for c in range(len(listed))]
    assert stream_srv.streams() and not list_srv.streams()
    mine, theirs = stream_srv.state.model, list_srv.state.model
    torch.testing.assert_close(mine.total_delta()["p"], theirs.total_delta()["p"])
    torch.testing.assert_close(mine.head["h"], theirs.head["h"])
    assert stream_srv.state.history[0]["clients"] == list(range(30))


def test_a_streaming_round_rejects_a_second_reply_from_one_client():
    srv = FederatedServer(load_config(None, ["data.num_clients=4", "lora.ranks=[2]",
                                             "methods=[fedit]", *STREAM]), "fedit", None, SCHEMA)
    srv.configure([0, 1, 2])
    record = srv.aggregate(iter([result(0, 2), result(1, 2), result(0, 2, scale=3.0),
                                 result(2, 3), result(2, 2)]))
    assert record["clients"] == [0, 1]
    assert record["rejected"][0].startswith("client: answered more than once")
    assert record["rejected"][2].startswith("shape: ")  # its first reply's reason stays
    assert record["rejected"][2].endswith("; and it answered again")


# -- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("server.min_clients=0", r"`server.min_clients` must be at least 1"),
    ("server.min_clients=5", r"`server.min_clients` is 5 but only 4 clients .* allowed: 1..4"),
    ("server.retries=-1", r"`server.retries` must be at least 0"),
    ("server.max_update_norm=0", r"`server.max_update_norm` must be a positive number or null"),
    ("server.clip_norm=-2", r"`server.clip_norm` must be a positive number or null"),
    ("server.max_examples=0", r"`server.max_examples` must be a positive integer or null"),
    ("server.max_client_weight=1.5", r"`server.max_client_weight` must be in \(0, 1\] or null"),
    ("server.max_client_weight=0.1", r"4 clients per round cannot all stay below it; "
                                     r"allowed: 0.25..1 or null"),
    ("server.clip=1", r"unknown key `server.clip`; allowed keys here: \['clip_norm'"),
    ("server.retries=two", r"`server.retries` must be of type int"),
    ("server.stream=true", r"`server.max_update_norm: auto` and `eval.shadow: true` need the "
                           r"whole round at once: set `server.max_update_norm` to a number"),
])
def test_bad_server_settings_are_named_with_the_allowed_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.num_clients=4", override])


# -- fuzzing the server: a round with any replies --------------------------------------------------
#: How a reply is broken -> what it does to a ``result(...)``-like reply.
BREAKS = {
    "float_id": lambda r: setattr(r, "client_id", float(r.client_id)),
    "str_id": lambda r: setattr(r, "client_id", str(r.client_id)),
    "stranger": lambda r: setattr(r, "client_id", 77),
    "list_loss": lambda r: setattr(r, "train_loss", [0.1]),
    "nan_loss": lambda r: setattr(r, "train_loss", float("nan")),
    "nan": lambda r: r.adapter["p" + LORA_B].view(-1).__setitem__(0, float("nan")),
    "overflow": lambda r: r.adapter.update({"p" + LORA_B: 1e37 * r.adapter["p" + LORA_B]}),
    "rank": lambda r: r.adapter.update({"p" + LORA_A: r.adapter["p" + LORA_A][:1]}),
    "missing": lambda r: r.adapter.pop("p" + LORA_A),
    "int_factor": lambda r: r.adapter.update({"p" + LORA_B: r.adapter["p" + LORA_B].int()}),
    "head": lambda r: setattr(r, "head", "not a dict"),
    "examples": lambda r: setattr(r, "num_examples", -1),
    "bool_examples": lambda r: setattr(r, "num_examples", True),
}


#: What ``server.stream`` needs besides itself (checks that see one reply at a time).
STREAM = ["server.stream=true", "server.max_update_norm=null", "eval.shadow=false"]
SCHEMA = ReplySchema({"p": (6, 5)}, {"h": (2,)})


@FUZZ
@given(broken=st.lists(st.sampled_from([None, *BREAKS]), min_size=1, max_size=4),
       method=st.sampled_from(["glora", "flexlora", "fedit", "ffa"]),
       min_clients=st.integers(1, 2), stream=st.booleans())
def test_a_round_with_any_replies_completes_with_the_valid_ones_or_stays_put(
        broken, method, min_clients, stream):
    """Random and adversarial replies to ``FederatedServer.aggregate``: the round either
    aggregates exactly the valid replies (the state equals a server given those alone, every
    other reply is in ``rejected``) or raises AggregationError and leaves the state as it was.
    Never anything else. The replies come from a one-pass iterator; with ``server.stream``
    FedIT and FFA-LoRA (their clients' ``A`` is one seed's) fold them one at a time."""
    n = len(broken)
    cfg = ["data.num_clients=4", "lora.ranks=[2]", f"methods=[{method}]",
           f"server.min_clients={min_clients}", *(STREAM if stream else [])]
    replies = [result(c, 2) for c in range(n)]
    for r in replies:
        r.adapter = {k: v.float() for k, v in r.adapter.items()}
    valid = [r for r, b in zip(replies, broken) if b is None]
    for r, b in zip(replies, broken):
        if b is not None:
            BREAKS[b](r)
    srv, clean = (FederatedServer(load_config(None, cfg), method, None, SCHEMA if stream else None)
                  for _ in range(2))
    srv.configure(list(range(n)))
    event(f"streams: {srv.streams()}")
    before = srv.state
    if len(valid) < min_clients:
        with pytest.raises(AggregationError):
            srv.aggregate(iter(replies))
        assert srv.state is before
        event("retried: too few valid replies")
        return
    record = srv.aggregate(iter(replies))
    assert record["clients"] == [r.client_id for r in valid]
    assert {client_key(r) for r, b in zip(replies, broken) if b} == set(record["rejected"])
    clean.configure(list(range(n)))
    clean.aggregate(valid)
    mine, theirs = srv.state.model.total_delta(), clean.state.model.total_delta()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    event(f"aggregated {len(valid)} of {n}")
