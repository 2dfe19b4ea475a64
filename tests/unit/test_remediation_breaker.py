"""The circuit breaker: at most N nodes, and X% of a SKU's serving nodes, at once."""

from __future__ import annotations

from provisioner.remediate.breaker import BreakerNode, circuit_breaker, sku_limit
from provisioner.remediate.policy import BreakerLimits

H100, L40S = "h100-sxm-8", "l40s-4"


def nodes(*names: str, sku: str | None = H100) -> list[BreakerNode]:
    return [BreakerNode(n, sku) for n in names]


def test_limit_one_with_two_candidates_one_acts_one_waits() -> None:
    verdict = circuit_breaker(nodes("gpu1", "gpu2"), [], {H100: 100},
                              BreakerLimits(max_nodes=1, max_percent=100))
    assert verdict.act == ["gpu1"]
    assert [w.name for w in verdict.wait] == ["gpu2"]
    assert verdict.wait[0].reason == ("circuit breaker: 1 node already draining or "
                                      "remediating, at most 1 at once (breaker.max_nodes)")
    assert verdict.to_dict()["wait"][0]["name"] == "gpu2"


def test_nodes_already_remediating_count_and_keep_their_slot() -> None:
    limits = BreakerLimits(max_nodes=2, max_percent=100)
    verdict = circuit_breaker(nodes("gpu1", "gpu2", "gpu3"), nodes("gpu1", "gpu9"),
                              {H100: 50}, limits)
    # gpu1 is on its next rung (its slot is held); gpu9 holds the other.
    assert verdict.act == ["gpu1"]
    assert [w.name for w in verdict.wait] == ["gpu2", "gpu3"]
    assert "2 nodes already draining or remediating" in verdict.wait[0].reason


def test_percent_of_a_skus_serving_nodes_rounded_up() -> None:
    limits = BreakerLimits(max_nodes=100, max_percent=10)
    assert [sku_limit(n, 10) for n in (0, 1, 10, 11, 20)] == [0, 1, 1, 2, 2]
    verdict = circuit_breaker(nodes("a1", "a2", "a3") + nodes("b1", "b2", sku=L40S), [],
                              {H100: 20, L40S: 4}, limits)
    # 10% of 20 H100 nodes is 2; 10% of 4 L40S nodes rounds up to 1.
    assert verdict.act == ["a1", "a2", "b1"]
    waiting = {w.name: w.reason for w in verdict.wait}
    assert set(waiting) == {"a3", "b2"}
    assert waiting["a3"] == ("circuit breaker: 2 h100-sxm-8 nodes already draining or "
                             "remediating; 10% of its 20 serving nodes allows 2 "
                             "(breaker.max_percent)")
    assert "10% of its 4 serving nodes allows 1" in waiting["b2"]


def test_a_sku_with_no_serving_node_waits() -> None:
    verdict = circuit_breaker(nodes("gpu1", sku=None), [], {H100: 10}, BreakerLimits(5, 50))
    assert verdict.act == []
    assert verdict.wait[0].reason == ("circuit breaker: no (no SKU) node serves, so "
                                      "breaker.max_percent allows none to be worked on")


def test_the_active_nodes_of_a_sku_fill_its_percentage() -> None:
    verdict = circuit_breaker(nodes("gpu2"), nodes("gpu1"), {H100: 9},
                              BreakerLimits(max_nodes=10, max_percent=10))
    assert verdict.act == []
    assert "1 h100-sxm-8 node already draining or remediating" in verdict.wait[0].reason
