"""The burn-in agent's silent-data-corruption checks against the faults that slipped past
the word-sum checksum and the one-vector Freivalds check (issue 22): each fault acts on
the product or the collective as faulty hardware would, not on the check's own code."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from provisioner.burnin import agent  # noqa: E402
from provisioner.burnin.thresholds import failure_reason  # noqa: E402

CPU = torch.device("cpu")
REAL_MATMUL = torch.matmul
DTYPES = ["bfloat16", "float16", "float32"]


def _ints(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1).view(torch.int16 if t.element_size() == 2 else torch.int32)


def swap_elements(t: torch.Tensor) -> None:
    flat = t.view(-1)
    flat[[3, 9]] = flat[[9, 3]]  # two elements of one row


def swap_rows(t: torch.Tensor) -> None:
    t[[2, 5]] = t[[5, 2]]


def swap_tiles(t: torch.Tensor) -> None:
    a, b = t[0:32, 0:32].clone(), t[32:64, 32:64].clone()
    t[0:32, 0:32], t[32:64, 32:64] = b, a


def sign_pair(t: torch.Tensor) -> None:
    """Bit 63 of two 64-bit words: the sign of two elements (the old word sum's +2^63
    twice, which wrapped to no change at all)."""
    words = t.view(-1).view(torch.int64)
    words[[4, 11]] ^= torch.tensor(-(2 ** 63), dtype=torch.int64)


def opposite_flips(t: torch.Tensor) -> None:
    """One bit set in one element and cleared in another: +2^k and -2^k."""
    ints = _ints(t)
    bit = 3
    on = int(((ints >> bit) & 1 == 0).nonzero()[0])
    off = int(((ints >> bit) & 1 == 1).nonzero()[0])
    ints[on] |= 1 << bit
    ints[off] &= ~(1 << bit)


def _transient(change: Callable[[torch.Tensor], None], at: int = 9) -> Any:
    calls = {"n": 0}

    def matmul(a, b, out=None):  # type: ignore[no-untyped-def]
        result = REAL_MATMUL(a, b, out=out)
        calls["n"] += 1
        if calls["n"] == at:
            change(result)
        return result

    return matmul


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("change", [swap_elements, swap_rows, swap_tiles, sign_pair,
                                    opposite_flips], ids=lambda f: f.__name__)
def test_a_pattern_the_word_sum_missed_fails_the_repeat_check(
        monkeypatch: pytest.MonkeyPatch, dtype: str, change: Callable[[torch.Tensor], None]
        ) -> None:
    monkeypatch.setattr(agent.torch, "matmul", _transient(change))
    m = agent.gemm(CPU, dtype, 64, 0.05, 0, seed=2)
    assert not m.ok and m.detail["repeat_mismatches"] == 1, m.detail
    assert "1 of" in failure_reason(m.detail)


def test_a_dropped_write_fails() -> None:
    """The 9th product is never written: the buffer still holds the 8th, the other
    product of the pair, which is not what the 9th should be."""
    calls = {"n": 0}

    def matmul(a, b, out=None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 9 and out is not None:
            return out
        return REAL_MATMUL(a, b, out=out)

    agent_matmul = agent.torch.matmul
    agent.torch.matmul = matmul
    try:
        m = agent.gemm(CPU, "bfloat16", 64, 0.05, 0, seed=2)
    finally:
        agent.torch.matmul = agent_matmul
    assert not m.ok and m.detail["repeat_mismatches"] == 1


def _persistent_scale(factor: float, on: Callable[[], bool] = lambda: True) -> Any:
    """Every product, the same element (the largest of row 5) times ``factor``: the
    repeats agree, so only a check against another computation can see it."""

    def matmul(a, b, out=None):  # type: ignore[no-untyped-def]
        result = REAL_MATMUL(a, b, out=out)
        if on():
            j = int(result[5].abs().argmax())
            result[5, j] = result[5, j] * factor
        return result

    return matmul


@pytest.mark.parametrize("dtype", DTYPES + ["tf32"])
def test_a_persistent_error_on_a_gpu_with_no_peer_fails(monkeypatch: pytest.MonkeyPatch,
                                                        dtype: str) -> None:
    """x(1 + 2^-6) in one element of every product, on a one-GPU node: there is no peer
    to vote, and the whole-product float64 reference sees it."""
    monkeypatch.setattr(agent.torch, "matmul", _persistent_scale(1 + 2 ** -6))
    m = agent.gemm(CPU, dtype, 128, 0.05, 0, seed=4)
    # One wrong element in each of the two products, both seen.
    assert m.detail["repeat_bit_identical"] and m.detail["reference_elements"] == 2
    assert not m.ok and "wrong against a float64 reference" in failure_reason(m.detail)


@pytest.mark.parametrize("dtype", DTYPES + ["tf32"])
def test_healthy_products_pass_the_reference_at_every_seed(dtype: str) -> None:
    for seed in range(6):
        m = agent.gemm(CPU, dtype, 96, 0.01, 0, seed=seed)
        assert m.ok and m.detail["reference_ratio"] < 1 and m.detail["freivalds_ratio"] < 1


def test_two_gpus_that_disagree_are_told_apart_by_the_reference(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-GPU node: no majority, but only GPU 1's product fails the float64 reference,
    so GPU 0 passes and GPU 1 fails, named."""
    monkeypatch.setattr(agent.torch, "matmul", _persistent_scale(
        1 + 2 ** -6, lambda: threading.current_thread().name == "gpuctl-gpu1"))
    idents = [{"index": i, "name": "cpu", "multiprocessors": None} for i in range(2)]
    runner = agent.DeviceRunner([CPU] * 2, idents)
    batch = runner.run("gemm_bfloat16", "TFLOPS", lambda i, dev: agent.gemm(
        dev, "bfloat16", 128, 0.05, i, 6), 60)
    runner.close()
    agent.cross_gpu_check(batch, idents)
    assert [m.ok for m in batch] == [True, False]
    assert "differs from that of GPU 0 of its model, which the float64 reference confirms" \
        in batch[1].detail["cross_gpu_mismatch"]


def test_the_digest_covers_every_bit() -> None:
    a = torch.randn(64, 64).to(torch.bfloat16)
    b = a.clone()
    sign_pair(b)
    c = a.clone()
    swap_tiles(c)
    assert len({agent.product_digest(a), agent.product_digest(b), agent.product_digest(c)}) == 3


# -- collectives -------------------------------------------------------------------------

def _simulated_all_reduce(world: int, seed: int, fault: Callable[[torch.Tensor], None]
                          ) -> Callable[..., None]:
    """All-reduce as a world of ``world`` ranks would compute it, rank 1's contribution
    passing a faulty link on its way."""

    def all_reduce(buf: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        total = torch.zeros_like(buf)
        for rank in range(world):
            part = torch.empty_like(buf)
            agent.fill_contribution(part, rank, world, seed)
            if rank == 1:
                fault(part)
            total += part
        buf.copy_(total)

    return all_reduce


def stuck_at_zero(bit: int) -> Callable[[torch.Tensor], None]:
    def fault(t: torch.Tensor) -> None:
        t.view(torch.int32).bitwise_and_(~(1 << bit))
    return fault


@pytest.mark.parametrize("bit", [0, 8, 16, 18, 22, 23, 24, 27, 30, 31])
def test_a_stuck_mantissa_bit_on_a_link_fails_the_all_reduce(
        monkeypatch: pytest.MonkeyPatch, bit: int) -> None:
    """The issue's stuck bits at mantissa positions 0, 8, 16 and 18 (and the top one, the
    exponent's and the sign) gave 0 wrong elements with data of rank+1 everywhere."""
    monkeypatch.setattr(agent.dist, "all_reduce", _simulated_all_reduce(4, 3, stuck_at_zero(bit)))
    buf = torch.empty(4096)
    assert agent.check_all_reduce(buf, 0, 4, seed=3) > 100
    monkeypatch.setattr(agent.dist, "all_reduce", _simulated_all_reduce(4, 3, lambda t: None))
    assert agent.check_all_reduce(buf, 0, 4, seed=3) == 0


def test_a_misplaced_chunk_fails_the_all_gather_naming_the_sender(
        monkeypatch: pytest.MonkeyPatch) -> None:
    world, size = 4, 1024

    def gather(out: torch.Tensor, chunk: torch.Tensor) -> None:
        for rank in range(world):
            part = out[rank * size:(rank + 1) * size]
            part.copy_(agent.pattern(rank * size, (rank + 1) * size, 5, CPU))
        out[2 * size:2 * size + 8] = out[2 * size + 8:2 * size + 16].clone()  # shifted

    monkeypatch.setattr(agent, "GATHER", gather)
    out, chunk = torch.empty(world * size), torch.empty(size)
    assert agent.check_all_gather(out, chunk, 0, world, seed=5) == [2]


def test_the_collective_pattern_exercises_every_mantissa_bit_and_sums_exactly() -> None:
    p = agent.pattern(0, 1 << 16, 9, CPU)
    bits = p.view(torch.int32)
    for bit in range(32):  # mantissa, exponent and sign: each changes
        share = float(((bits >> bit) & 1).float().mean())
        assert 0.4 < share < 0.6, bit
    assert bool(torch.isfinite(p).all()) and float(p.abs().min()) >= 2.0 ** -126
    parts = []
    for rank in range(3):
        part = torch.empty(1 << 16)
        agent.fill_contribution(part, rank, 3, 9)
        parts.append(part)
    # Any order of the sum gives the pattern bit for bit: one non-zero term each.
    assert torch.equal(parts[2] + parts[0] + parts[1], p)
    assert torch.equal((parts[1] + parts[2]) + parts[0], p)


def test_p2p_copies_are_checked_for_the_data_they_deliver(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two devices (CPU stand-ins) with peer access; the copy 1 -> 0 drops a bit on the
    way: its bandwidth is measured and the pair is failed, named."""
    monkeypatch.setattr(agent, "devices", lambda: [CPU, CPU])
    monkeypatch.setattr(agent.torch.cuda, "can_device_access_peer", lambda i, j: True)
    real_copy = torch.Tensor.copy_
    sources: dict[int, int] = {}

    def copy_(self, src, non_blocking=False):  # type: ignore[no-untyped-def]
        real_copy(self, src, non_blocking)
        if sources.get(src.data_ptr()) == 1:
            stuck_at_zero(5)(self[:64])
        return self

    real_fill = agent.fill_pattern

    def fill(buf, seed):  # type: ignore[no-untyped-def]
        real_fill(buf, seed)
        sources[buf.data_ptr()] = seed

    monkeypatch.setattr(agent, "fill_pattern", fill)
    monkeypatch.setattr(torch.Tensor, "copy_", copy_)
    m = agent.p2p_matrix(1)
    monkeypatch.setattr(torch.Tensor, "copy_", real_copy)
    assert not m.ok and m.value and m.value > 0
    assert m.detail["wrong_copies"][0][:2] == [1, 0]
    assert "1 GPU pair delivered wrong data, first 1->0" in m.detail["error"]


def test_a_tie_is_not_broken_for_a_gpu_that_failed_its_own_checks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU 0's first product has one low bit flipped (its repeat check fails) and GPU 1
    is healthy: the reference passes both first products' neighbours, but only GPU 1
    passed all its own checks, so GPU 1 is right and passes."""
    calls: dict[str, int] = {}

    def matmul(a, b, out=None):  # type: ignore[no-untyped-def]
        result = REAL_MATMUL(a, b, out=out)
        name = threading.current_thread().name
        calls[name] = calls.get(name, 0) + 1
        if name == "gpuctl-gpu0" and calls[name] == 1:
            _ints(result)[5] ^= 1
        return result

    monkeypatch.setattr(agent.torch, "matmul", matmul)
    idents = [{"index": i, "name": "cpu", "multiprocessors": None} for i in range(2)]
    runner = agent.DeviceRunner([CPU] * 2, idents)
    batch = runner.run("gemm_float32", "TFLOPS", lambda i, dev: agent.gemm(
        dev, "float32", 64, 0.05, i, 3), 60)
    runner.close()
    agent.cross_gpu_check(batch, idents)
    assert [m.ok for m in batch] == [False, True]


def test_a_nan_in_a_product_fails_and_the_document_stays_json() -> None:
    import json

    def matmul(a, b, out=None):  # type: ignore[no-untyped-def]
        result = REAL_MATMUL(a, b, out=out)
        result.view(-1)[3] = float("nan")
        return result

    real, agent.torch.matmul = agent.torch.matmul, matmul
    try:
        m = agent.gemm(CPU, "float32", 64, 0.02, 0, seed=1)
    finally:
        agent.torch.matmul = real
    assert not m.ok and "NaN or an infinity" in m.detail["error"]
    json.loads(json.dumps(m.detail, allow_nan=False))
