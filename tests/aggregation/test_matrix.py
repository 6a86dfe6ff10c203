"""Properties every registered method must have (GLoRA joins automatically once registered)."""

from __future__ import annotations

import math

import pytest
import torch
from lora_helpers import D_IN, D_OUT, exact_average, make_clients, regauge, rel
from hypothesis import given, settings
from hypothesis import strategies as st

import glora
from glora.aggregation import ServerState

#: Every registered method with default options, plus the non-default paths worth covering.
CASES = [(name, {}) for name in glora.methods()] + [("flexlora", {"path": "dense"})]
IDS = [name + "".join(f"-{v}" for v in opts.values()) for name, opts in CASES]
#: Methods whose server result must not depend on the clients' factorizations.
GAUGE_INVARIANT = [c for c in CASES if c[0] in {"flora", "flexlora", "fedex", "glora"}]
#: Methods that build a dense d_out x d_in matrix (SPEC.md's last peer column).
DENSE = [("fedex", {}), ("flexlora", {"path": "dense"})]
#: Methods that take clients of different ranks.
MIXED = [c for c in CASES if glora.get_method(c[0]).mixed_ranks]
MIXED_RANKS = (2, 4, 3)
EQUAL_RANKS = (3, 3, 3)


def spec(name: str) -> glora.aggregation.MethodSpec:
    return glora.get_method(name)


def clients_for(name: str, ranks=None, **kw) -> list[glora.ClientUpdate]:
    """Valid clients for ``name``: mixed ranks where allowed, a shared ``A`` where frozen."""
    if ranks is None:
        ranks = MIXED_RANKS if spec(name).mixed_ranks else EQUAL_RANKS
    return make_clients(ranks, shared_A="A" in spec(name).frozen_in(0), **kw)


def outputs(state: ServerState, ups: list[glora.ClientUpdate]) -> dict[str, torch.Tensor]:
    """Everything a state yields, densely: its update, base update and each client's start."""
    out = {"delta": state.delta()}
    base = state.base_update()
    if base is not None:
        out["base"] = base if isinstance(base, torch.Tensor) else base[0] @ base[1]
    for u in ups:
        start = state.readout(u.rank, u.scaling)
        if start is not None:
            out[f"start{u.rank}"] = u.scaling * start[0] @ start[1]
    return out


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_client_order_changes_nothing(name, opts):
    ups = clients_for(name)
    before = outputs(glora.aggregate(name, ups, **opts), ups)
    after = outputs(glora.aggregate(name, ups[::-1], **opts), ups)
    assert before.keys() == after.keys()
    for key in before:
        assert rel(after[key], before[key]) < 1e-12, key


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_identical_clients_give_back_their_update(name, opts):
    u = clients_for(name)[0]
    ups = [glora.ClientUpdate(u.B, u.A, n, u.scaling) for n in (3, 10, 50)]
    state = glora.aggregate(name, ups, **opts)
    for key, value in outputs(state, ups[:1]).items():
        expected = u.delta() if key != "base" or state.fresh_adapter else torch.zeros_like(value)
        assert (value - expected).norm() < 1e-12 * u.delta().norm(), key


def bad_inputs(name: str) -> list[tuple[str, list[glora.ClientUpdate], str]]:
    """(label, updates, message) where client 1 is wrong."""
    ups = clients_for(name)
    u = ups[1]

    def replace(**kw) -> list[glora.ClientUpdate]:
        fields = dict(B=u.B, A=u.A, num_examples=u.num_examples, scaling=u.scaling) | kw
        return [ups[0], glora.ClientUpdate(**fields), ups[2]]

    nan_B, inf_A = u.B.clone(), u.A.clone()
    nan_B[0, 0], inf_A[-1, -1] = math.nan, math.inf
    too_big = min(D_OUT, D_IN) + 1
    cases = [
        ("nan", replace(B=nan_B), "non-finite"),
        ("inf", replace(A=inf_A), "non-finite"),
        ("B/A rank mismatch", replace(A=u.A[:-1]), "rank mismatch"),
        ("layer shape", replace(B=torch.randn(D_OUT + 1, u.rank, dtype=u.B.dtype)), "layer shape"),
        ("rank too large", replace(B=torch.randn(D_OUT, too_big, dtype=u.B.dtype),
                                   A=torch.randn(too_big, D_IN, dtype=u.A.dtype)), "rank"),
        ("zero examples", replace(num_examples=0), "num_examples"),
        ("negative examples", replace(num_examples=-3), "num_examples"),
    ]
    if not spec(name).mixed_ranks:
        r = u.rank + 1
        cases.append(("mixed ranks", replace(B=torch.randn(D_OUT, r, dtype=u.B.dtype),
                                             A=torch.randn(r, D_IN, dtype=u.A.dtype)),
                      "needs equal ranks"))
    return cases


BAD = [(name, opts, label, ups, msg) for name, opts in CASES
       for label, ups, msg in bad_inputs(name)]


@pytest.mark.parametrize("name, opts, label, ups, message", BAD,
                         ids=[f"{b[0]}-{b[2]}" for b in BAD])
def test_bad_input_is_rejected_naming_the_client(name, opts, label, ups, message):
    with pytest.raises(glora.InvalidUpdateError, match=message) as err:
        glora.aggregate(name, ups, **opts)
    assert err.value.client == 1 and "client 1" in str(err.value)


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_empty_round_is_rejected(name, opts):
    with pytest.raises(glora.InvalidUpdateError, match="empty") as err:
        glora.aggregate(name, [], **opts)
    assert err.value.client is None


@pytest.mark.parametrize("name, opts", MIXED, ids=[IDS[CASES.index(c)] for c in MIXED])
def test_mixed_ranks_are_accepted_where_declared(name, opts):
    ups = clients_for(name, MIXED_RANKS)
    assert all(torch.isfinite(v).all() for v in outputs(glora.aggregate(name, ups, **opts),
                                                          ups).values())


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
@pytest.mark.parametrize("all_zero", [False, True])
def test_zero_update_is_valid(name, opts, all_zero):
    """A fresh LoRA init (``B = 0``) is a valid update; the zero clients contribute nothing."""
    ups = clients_for(name)
    zeroed = [glora.ClientUpdate(torch.zeros_like(u.B), u.A, u.num_examples, u.scaling)
              for u in ups]
    ups = zeroed if all_zero else [zeroed[0]] + ups[1:]
    values = outputs(glora.aggregate(name, ups, **opts), ups)
    assert all(torch.isfinite(v).all() for v in values.values())
    if all_zero:
        assert all(torch.count_nonzero(v) == 0 for v in values.values())
    else:
        assert values["delta"].norm() > 0


@pytest.mark.parametrize("name, opts", GAUGE_INVARIANT,
                         ids=[IDS[CASES.index(c)] for c in GAUGE_INVARIANT])
@pytest.mark.parametrize("dtype, cond, tol", [
    pytest.param(torch.float64, 2.0, 1e-9, id="float64-cond2"),
    pytest.param(torch.float64, 1e3, 1e-9, id="float64-cond1e3"),
    pytest.param(torch.float32, 2.0, 1e-4, id="float32-cond2"),
    pytest.param(torch.float32, 1e3, 1e-4, id="float32-cond1e3")])
def test_gauge_invariance(name, opts, dtype, cond, tol):
    ups = clients_for(name, dtype=dtype)
    state = glora.aggregate(name, ups, **opts)
    assert state.delta().dtype == dtype
    for seed in (1, 2):
        assert rel(glora.aggregate(name, regauge(ups, cond, seed), **opts).delta(),
                   state.delta()) < tol


def test_factor_averaging_is_not_gauge_invariant():
    ups = make_clients(EQUAL_RANKS)
    assert rel(glora.aggregate("fedit", regauge(ups, 10.0)).delta(),
               glora.aggregate("fedit", ups).delta()) > 1e-2


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_no_dense_matrix_unless_published(name, opts, shape_recorder):
    """Aggregate and readout build no ``d_out x d_in`` tensor, except where SPEC.md says so."""
    d_out, d_in = 41, 29  # unequal, both above the sum of ranks
    ups = clients_for(name, d_out=d_out, d_in=d_in)
    assert sum(u.rank for u in ups) < min(d_out, d_in)
    with shape_recorder:
        state = glora.aggregate(name, ups, **opts)
        for u in ups:
            state.readout(u.rank, u.scaling)
    dense = shape_recorder.created((d_out, d_in), (d_in, d_out))
    assert dense == ((name, opts) in DENSE)


@st.composite
def rounds(draw) -> list[glora.ClientUpdate]:
    """A random round: layer shape, 1-4 clients of random ranks, scalings and sizes."""
    d_out, d_in = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    ranks = draw(st.lists(st.integers(1, min(d_out, d_in)), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**16))
    ups = make_clients(ranks, d_out=d_out, d_in=d_in, seed=seed,
                       alpha=draw(st.floats(0.5, 32.0)))
    return [glora.ClientUpdate(u.B, u.A, draw(st.integers(1, 1000)), u.scaling) for u in ups]


@pytest.mark.parametrize("name, opts", MIXED, ids=[IDS[CASES.index(c)] for c in MIXED])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_mixed_rank_readout_shapes(name, opts, data):
    ups = data.draw(rounds())
    state = glora.aggregate(name, ups, **opts)
    d_out, d_in = ups[0].B.shape[0], ups[0].A.shape[1]
    assert state.delta().shape == (d_out, d_in) and torch.isfinite(state.delta()).all()
    for u in ups:
        start = state.readout(u.rank, u.scaling)
        if start is None:
            assert state.fresh_adapter
            continue
        B, A = start
        assert B.shape == (d_out, u.rank) and A.shape == (u.rank, d_in)
        assert torch.isfinite(B).all() and torch.isfinite(A).all()


def test_gauge_helpers_are_consistent():
    """``regauge`` keeps every update (so the gauge tests test the methods, not the helper)."""
    ups = make_clients()
    for u, v in zip(ups, regauge(ups, 1e3)):
        assert rel(v.delta(), u.delta()) < 1e-12
    assert rel(exact_average(regauge(ups, 1e3)), exact_average(ups)) < 1e-12
