"""``glora.Accumulator``: update by update, the same aggregate as the list API; a bad update is
rejected alone; the streaming methods' memory does not grow with the number of clients."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import glora
from glora.errors import ConfigError, InvalidUpdateError

D_OUT, D_IN, RANK = 12, 9, 3
#: Methods whose clients share a frozen factor with the server (client updates built to match).
SHARED_A = {"ffa", "fedsvd", "rolora"}


def round_updates(method: str, n: int = 4, seed: int = 0) -> list[glora.ClientUpdate]:
    """``n`` float64 updates the method accepts, of unequal sizes and scalings (so a plain and a
    scaling-weighted average of ``B`` differ)."""
    g = torch.Generator().manual_seed(seed)
    ranks = [2, 3, 4, 3] if glora.get_method(method).mixed_ranks else [RANK] * 4
    shared_A = torch.randn(RANK, D_IN, generator=g, dtype=torch.float64)
    updates = []
    for i in range(n):
        r = ranks[i % 4]
        A = shared_A if method in SHARED_A else torch.randn(r, D_IN, generator=g,
                                                             dtype=torch.float64)
        B = torch.randn(D_OUT, r, generator=g, dtype=torch.float64)
        updates.append(glora.ClientUpdate(B, A, 5 + 7 * i, 0.5 * (1 + i % 3)))
    return updates


def fed(method: str, updates: list[glora.ClientUpdate], **options) -> glora.Accumulator:
    acc = glora.Accumulator(method, **options)
    for u in updates:
        acc.add(u)
    return acc


@pytest.mark.parametrize("method", glora.methods())
def test_the_accumulated_aggregate_is_the_list_aggregate(method: str) -> None:
    updates = round_updates(method)
    state, expected = fed(method, updates).result(), glora.aggregate(method, updates)
    assert type(state) is type(expected)
    torch.testing.assert_close(state.delta(), expected.delta(), rtol=1e-12, atol=1e-12)
    assert state.tensors().keys() == expected.tensors().keys()
    for key, t in expected.tensors().items():
        torch.testing.assert_close(state.tensors()[key], t, rtol=1e-12, atol=1e-12)
    assert getattr(state, "scaling", None) == pytest.approx(getattr(expected, "scaling", None))


def test_fedit_averages_B_plainly_and_ffa_by_scaling() -> None:
    """The two stream rules differ when scalings differ; each matches its method's rule."""
    updates = round_updates("ffa")
    plain = fed("fedit", updates).result()
    scaled = fed("ffa", updates).result()
    p = torch.tensor([u.num_examples for u in updates], dtype=torch.float64)
    p = p / p.sum()
    s = torch.tensor([u.scaling for u in updates], dtype=torch.float64)
    Bs = torch.stack([u.B for u in updates])
    torch.testing.assert_close(plain.B, torch.einsum("i,ijk->jk", p, Bs))
    torch.testing.assert_close(scaled.B, torch.einsum("i,ijk->jk", p * s / (p * s).sum(), Bs))
    assert not torch.allclose(plain.B, scaled.B)


@pytest.mark.parametrize("method", ["fedit", "glora"])
def test_a_bad_update_is_rejected_alone(method: str) -> None:
    good = round_updates(method, n=3)
    nan_B = good[1].B.clone()
    nan_B[0, 0] = float("nan")
    acc = glora.Accumulator(method)
    acc.add(good[0])
    for position, bad in enumerate((
            glora.ClientUpdate(nan_B, good[1].A, 10, 1.0),
            glora.ClientUpdate(torch.randn(D_OUT + 1, RANK, dtype=torch.float64),
                               torch.randn(RANK, D_IN, dtype=torch.float64), 10, 1.0)), start=1):
        with pytest.raises(InvalidUpdateError) as info:
            acc.add(bad)
        assert info.value.client == position  # its place among the updates given to `add`
    acc.add(good[2])
    assert acc.count == 2
    torch.testing.assert_close(acc.result().delta(),
                               glora.aggregate(method, [good[0], good[2]]).delta())


def test_an_update_that_breaks_the_shared_factor_is_rejected_with_its_position() -> None:
    updates = round_updates("ffa", n=3)
    acc = fed("ffa", updates[:2])
    other = glora.ClientUpdate(updates[2].B, updates[2].A + 1e-3, 10, 1.0)
    with pytest.raises(InvalidUpdateError, match=r"client 2: `A`: not client 0's"):
        acc.add(other)
    torch.testing.assert_close(acc.result().delta(), glora.aggregate("ffa", updates[:2]).delta())


def test_rolora_needs_one_factor_shared_by_all() -> None:
    """Clients 0 and 1 share ``A`` (they trained ``B``); client 2 changed ``A`` as well."""
    updates = round_updates("rolora", n=3)
    acc = fed("rolora", updates[:2])
    with pytest.raises(InvalidUpdateError, match=r"client 2: `A`.*one of them shared"):
        acc.add(glora.ClientUpdate(updates[2].B, updates[2].A * 2, 10, 1.0))
    # a round that shares `B` instead (it trained `A`) streams as well
    B = updates[0].B
    trained_A = [glora.ClientUpdate(B, u.A + 0.1 * i, u.num_examples, u.scaling)
                 for i, u in enumerate(updates)]
    torch.testing.assert_close(fed("rolora", trained_A).result().delta(),
                               glora.aggregate("rolora", trained_A).delta())


@pytest.mark.parametrize("method", ["fedit", "ffa", "fedsvd", "rolora", "fedsa"])
def test_a_streaming_method_holds_the_same_memory_for_5_or_200_clients(method: str) -> None:
    def held_bytes(acc: glora.Accumulator) -> int:
        return sum(t.numel() * t.element_size() for t in acc.tensors())

    small = fed(method, round_updates(method, n=5))
    large = fed(method, round_updates(method, n=200))
    assert held_bytes(small) == held_bytes(large) > 0
    # and no reference to an added update survives it (beyond client 0's, the checks' reference)
    update = round_updates(method, n=2)[1]  # seed 0: the large round's shared `A`
    update = glora.ClientUpdate(update.B.clone(), update.A, 3, 1.0)
    gone = weakref.ref(update.B)
    large.add(update)
    del update
    gc.collect()
    assert gone() is None


def test_glora_keeps_the_updates_for_its_second_pass() -> None:
    updates = round_updates("glora", n=3)
    acc = fed("glora", updates)
    assert all(any(t is u.B for t in acc.tensors()) for u in updates)


def test_options_are_checked_at_once_and_an_empty_round_is_refused() -> None:
    with pytest.raises(ConfigError, match="rank"):
        glora.Accumulator("glora", rank=0)
    with pytest.raises(ConfigError, match="unknown method"):
        glora.Accumulator("fedavg")
    with pytest.raises(InvalidUpdateError, match="none was added"):
        glora.Accumulator("fedit").result()
