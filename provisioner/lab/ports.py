"""The lab's ports.

The lab's nodes share this machine's network namespace, where every real node has its
own: a port one lab's nodes listen on is taken for every other lab running beside it
(the test suite runs two at once, on blocks 40-139 and 140-239). Each lab takes its
ports from the third octet of its nodes' addresses (its /24 block, N), below the
kernel's ephemeral range (ip_local_port_range, 32768 up by default):
- 12000 + 10 N ...: its Slurm's daemons (lab.slurm; past ten, or where one is taken,
  a free port from 30500 up);
- 15000 + 50 N: its nodes' rendezvous port, gpuctl_rdzv_port; a multinode burn-in
  listens there and up to 332 above (ring pairs), so labs a few blocks apart share
  ports and must not run at once; real nodes default to 29400 + the run's id;
- its Slurm's first job id is 1 + 4 N: the smoke job's rendezvous is
  29500 + job id % 1000 (provisioner/slurm/smoke.py), 29500 to 30499.
A lab's ranges never meet those of one 100 blocks away.
"""

from __future__ import annotations

import ipaddress


def address_block(address: str) -> int:
    """N, the third octet of a lab node's IPv4 address."""
    return int(ipaddress.IPv4Address(address).packed[2])


def rdzv_port(address: str) -> int:
    """The rendezvous port of the lab node at ``address`` (see above)."""
    return 15000 + 50 * address_block(address)


def slurm_ports(block: int) -> range:
    """The ten ports planned for the Slurm of the lab on block ``block``."""
    return range(12000 + 10 * block, 12000 + 10 * block + 10)


def first_job_id(block: int) -> int:
    """The first job id of the Slurm of the lab on block ``block``."""
    return 1 + 4 * block
