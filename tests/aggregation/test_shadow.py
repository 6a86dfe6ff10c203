"""Shadow distances: a method's update against the exact average and its best rank-R truncation,
computed in factored form, equal the dense computation."""

from __future__ import annotations

import pytest
from lora_helpers import best_rank, exact_average, make_clients, regauge

import glora
from glora.aggregation.shadow import shadow_norms


def dense_norms(ups, state, rank: int) -> dict[str, float]:
    D = exact_average(ups)
    D_R = best_rank(D, rank)
    dW = state.delta().double()
    return {"exact": float(D.norm()) ** 2, "to_exact": float((dW - D).norm()) ** 2,
            "to_best": float((dW - D_R).norm()) ** 2, "best_to_exact": float((D_R - D).norm()) ** 2}


@pytest.mark.parametrize("method,ranks", [("glora", (2, 4, 3)), ("flexlora", (2, 4, 3)),
                                          ("flora", (2, 4, 3)), ("fedex", (3, 3, 3)),
                                          ("fedit", (3, 3, 3)), ("hetlora", (2, 4, 3))])
def test_factored_norms_equal_the_dense_ones(method, ranks):
    ups = make_clients(ranks)
    state = glora.aggregate(method, ups)
    got, want = shadow_norms(ups, state, 4), dense_norms(ups, state, 4)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-8, abs=1e-12 * want["exact"]), key


def test_what_each_method_is_measured_to_be():
    ups = make_clients((2, 4, 3))
    norms = {m: shadow_norms(ups, glora.aggregate(m, ups, **kw), 4)
             for m, kw in (("glora", {"rank": 4}), ("flexlora", {"rank": 4}), ("flora", {}))}
    exact = norms["flora"]["exact"]
    assert norms["flora"]["to_exact"] < 1e-12 * exact  # FLoRA stacks: exact
    assert norms["flexlora"]["to_best"] < 1e-12 * exact  # FlexLoRA is the best rank-R
    # GLoRA is a projection of the exact average: never closer to it than the best rank-R
    assert norms["glora"]["to_exact"] >= norms["glora"]["best_to_exact"] * (1 - 1e-9)


def test_factor_averaging_moves_under_gauges_and_glora_does_not():
    ups = make_clients((3, 3, 3))
    gauged = regauge(ups, 10.0)
    for method, moves in (("fedit", True), ("glora", False)):
        a = shadow_norms(ups, glora.aggregate(method, ups), 3)["to_exact"]
        b = shadow_norms(gauged, glora.aggregate(method, gauged), 3)["to_exact"]
        assert (abs(a - b) > 1e-3 * a) == moves, method
