"""``burnin --multinode``: the fabric between nodes, tested so that a bad node or link is
named and the healthy nodes are certified.

First every node all-reduces with its two neighbours on a ring (node i with node i+1),
in rounds of disjoint pairs that run at once. A node whose every pair failed is at fault
(its NIC, its cable, its rail switch port); a failed pair between two nodes that work
with their other neighbour names that link. Then the nodes that came through all-reduce
together, as a training job would, and the busbw of that run is judged against the
profile. With perftest's ib_write_bw it would also be judged per rail; that is not here
yet (see the README).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from provisioner.burnin.command import DEFAULT_PYTHON, _torchrun_command, agent_script, burnin_env
from provisioner.burnin.levels import LEVELS
from provisioner.burnin.thresholds import Verdict, evaluate, node_profile
from provisioner.db.models import Node
from provisioner.errors import GpuctlError
from provisioner.handle import Gpuctl
from provisioner.probe.node_json import NodeOutputError, agent_document
from provisioner.ssh.exec import Target, run_on_node
from provisioner.ssh.hostkeys import KnownHosts

Outcomes = dict[str, tuple[str | None, dict[str, Any]]]
Judged = dict[str, tuple[str, list[Verdict], list[str]]]
TEST = "multinode_all_reduce_busbw"


def ring_rounds(count: int) -> list[list[tuple[int, int]]]:
    """The ring's edges (i, i+1 mod n) in rounds where no node is in two pairs: even
    edges, odd edges, and for an odd ring the edge closing it. Two nodes: one edge."""
    if count < 2:
        return []
    if count == 2:
        return [[(0, 1)]]
    edges = [(i, (i + 1) % count) for i in range(count)]
    if count % 2 == 0:
        rounds = [edges[0::2], edges[1::2]]
    else:  # the closing edge shares node 0 with the first: a round of its own
        rounds = [edges[0:count - 1:2], edges[1:count - 1:2], [edges[-1]]]
    return [r for r in rounds if r]


def blame(count: int, failed: set[tuple[int, int]]) -> tuple[set[int], set[tuple[int, int]]]:
    """(nodes at fault, links at fault) from the ring's failed pairs. A node is at fault
    when all of its pairs failed (with three nodes or more); a failed pair between two
    nodes not at fault is a bad link. With two nodes, a failure is the link's."""
    edges = [e for r in ring_rounds(count) for e in r]
    bad_nodes = {i for i in range(count) if count > 2
                 and all(e in failed for e in edges if i in e)}
    bad_links = {e for e in failed if not (set(e) & bad_nodes)}
    return bad_nodes, bad_links


class _Group:
    """One all-reduce among some nodes: a torchrun per node at the first's rendezvous."""

    def __init__(self, gc: Gpuctl, outcomes: Outcomes, run_id: int, level: str) -> None:
        self.gc, self.outcomes, self.run_id, self.level = gc, outcomes, run_id, level
        self.known = KnownHosts(gc.paths.known_hosts)
        self.script = agent_script()

    def run(self, group: list[Node], tag: str, port_offset: int
            ) -> tuple[str | None, dict[str, Any] | None]:
        hv = {n.name: json.loads(n.vars_json or "{}") for n in group}
        first = group[0]
        host = hv[first.name].get("gpuctl_fabric_address") or first.address
        port = int(hv[first.name].get("gpuctl_rdzv_port") or 29400 + self.run_id % 500) \
            + port_offset
        endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        timeout = LEVELS[self.level].timeout_s

        def one(node: Node) -> tuple[str | None, dict[str, Any] | None]:
            vars_ = hv[node.name]
            procs = max(1, int(self.outcomes[node.name][1].get("gpus") or 0))
            cmd = _torchrun_command(
                vars_.get("gpuctl_burnin_python", DEFAULT_PYTHON), len(group), procs,
                endpoint, node is first, vars_.get("gpuctl_fabric_address") or node.address,
                f"gpuctl-burnin-{self.run_id}-{tag}", burnin_env(vars_), len(self.script),
                timeout)
            try:
                res = run_on_node(Target.of(node), cmd, known_hosts=self.known,
                                  stdin_data=self.script, command_timeout=timeout,
                                  max_output=16 << 20)
            except GpuctlError as exc:
                return str(exc).removeprefix(f"{node.name}: "), None
            text = res.stdout.decode("utf-8", "replace")
            line = next((ln for ln in text.splitlines()
                         if ln.startswith('{"agent_version"')), None)
            if res.exit_code != 0:
                tail = [ln for ln in res.stderr.decode("utf-8", "replace").splitlines()
                        if "Error" in ln][-1:] or [""]
                return f"torchrun on {node.name} exited {res.exit_code}: {tail[0][:200]}", None
            try:
                return None, agent_document(line)["results"][0] if line else None
            except (NodeOutputError, IndexError) as exc:
                return f"torchrun on {node.name} printed no usable result ({exc})", None

        with ThreadPoolExecutor(len(group)) as pool:
            answers = list(pool.map(one, group))
        errors = [e for e, _ in answers if e]
        measurement = next((m for _, m in answers if isinstance(m, dict)), None)
        if errors or measurement is None:
            return (errors[0] if errors else "no rank reported a result"), None
        if not measurement.get("ok", True):
            return str((measurement.get("detail") or {}).get("error") or "wrong result"), None
        return None, measurement


def fabric_test(gc: Gpuctl, nodes: list[Node], outcomes: Outcomes, judged: Judged,
                run_id: int, level: str) -> None:
    """Ring of pairs, then one all-reduce over the nodes that came through; each node
    that passed its own tests gets verdicts naming what failed (itself, or a link)."""
    ok = sorted((n for n in nodes if not judged[n.name][2]), key=lambda n: n.name)
    if len(ok) < 2:
        return
    group = _Group(gc, outcomes, run_id, level)
    failed: dict[tuple[int, int], str] = {}
    if len(ok) > 2:
        for number, pairs in enumerate(ring_rounds(len(ok))):
            # Pairs of one round run at once, each at its own rendezvous port.
            jobs = [([ok[a], ok[b]], f"r{number}p{k}", 100 * (number + 1) + k)
                    for k, (a, b) in enumerate(pairs)]
            with ThreadPoolExecutor(len(jobs)) as pool:
                answers = list(pool.map(lambda job: group.run(*job), jobs))
            failed.update({pair: err for pair, (err, _) in zip(pairs, answers, strict=True)
                           if err})
    bad_nodes, bad_links = blame(len(ok), set(failed))

    def add(node: Node, verdict: Verdict) -> None:
        judged[node.name][1].append(verdict)
        if not verdict.passed:
            judged[node.name][2].append(verdict.reason)

    for i in sorted(bad_nodes):
        mine = [e for e in failed if i in e]
        peers = ", ".join(ok[j].name for e in mine for j in e if j != i)
        add(ok[i], Verdict(TEST, None, None, "GB/s", None, False,
                           f"{TEST}: {ok[i].name} failed with each of its ring neighbours "
                           f"({peers}): its fabric link is at fault ({failed[mine[0]][:160]})"))
    for a, b in sorted(bad_links):
        for i in (a, b):
            add(ok[i], Verdict(TEST, None, None, "GB/s", None, False,
                               f"{TEST}: the link between {ok[a].name} and {ok[b].name} "
                               f"failed ({failed[(a, b)][:160]})"))
    blamed = bad_nodes | {i for e in bad_links for i in e}
    rest = [n for i, n in enumerate(ok) if i not in blamed]
    if len(rest) < 2:
        return
    err, measurement = group.run(rest, "all", 0)
    names = ", ".join(n.name for n in rest)
    for node in rest:
        name = judged[node.name][0]
        if err or measurement is None:
            add(node, Verdict(TEST, None, None, "GB/s", None, False,
                              f"{TEST} across {len(rest)} nodes: {err}"))
            continue
        profile = node_profile(gc, node.sku, json.loads(node.vars_json or "{}"),
                               name.split("+")[0])[1]
        for v in evaluate([measurement], profile):
            add(node, Verdict(v.test, v.device, v.value, v.unit, v.threshold, v.passed,
                              v.reason.replace(" on node:", f" across {len(rest)} nodes "
                                               f"({names}):")))
        outcomes[node.name][1]["results"].append(measurement)
