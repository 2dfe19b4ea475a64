"""The lab's ports: labs side by side on one loopback (the suite's two workers) never
share one (provisioner/lab/ports.py)."""

from __future__ import annotations

import socket

from provisioner.lab.ports import address_block, first_job_id, rdzv_port, slurm_ports
from provisioner.lab.slurm import block_ports

RING = 300 + 32  # a multinode burn-in's ports above its base: 3 rounds, pairs 0..31


def test_a_lab_block_is_its_addresses_third_octet() -> None:
    assert address_block("127.0.140.17") == 140
    assert address_block("127.0.0.10") == 0


def test_two_workers_labs_never_share_a_port() -> None:
    """Worker 0's blocks are 40-139, worker 1's 140-239 (tests/e2e/conftest.py). Two labs
    running at once are at least a worker's share apart less the labs each used."""
    def ports(block: int) -> set[int]:
        base = rdzv_port(f"127.0.{block}.10")
        slurm = set(slurm_ports(block))
        smoke = {29500 + (first_job_id(block) + job) % 1000 for job in range(100)}
        return set(range(base, base + RING)) | slurm | smoke

    every = {block: ports(block) for block in range(256)}
    for a in range(40, 90):
        for b in range(140, 190):
            assert not every[a] & every[b], (a, b)
    assert max(max(p) for p in every.values()) < 32768  # below ephemeral ports


def test_slurm_ports_skip_one_already_bound() -> None:
    block = 250  # no worker's share
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 12000 + 10 * block + 1))
        ports = block_ports(block, 12)
    assert len(set(ports)) == 12 and 12000 + 10 * block + 1 not in ports
    assert ports[:9] == [p for p in range(12000 + 10 * block, 12000 + 10 * block + 10)
                         if p != 12000 + 10 * block + 1]
