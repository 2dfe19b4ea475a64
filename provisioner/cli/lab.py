"""``gpuctl lab ...``: simulated GPU nodes on this machine (Linux, root)."""

from __future__ import annotations

from pathlib import Path

import click

from provisioner.cli.common import Ctx, json_option, pass_ctx
from provisioner.lab.bmc import LabBmcs
from provisioner.lab.faults import FAULTS, parse_fault
from provisioner.lab.nodes import Lab
from provisioner.lab.os_images import LAB_OSES
from provisioner.lab.profiles import parse_node_profile, profile_names
from provisioner.lab.registration import (
    check_prerequisites,
    register_lab_nodes,
    set_slurmd_ports,
    unregister_lab_nodes,
)
from provisioner.lab.slurm import RELEASES, LabSlurm, LabSlurmInfo
from provisioner.ui.render import lab_table, print_json


@click.group()
def lab() -> None:
    """Simulated GPU nodes: real sshd per node in its own namespaces (needs root)."""


@lab.command("up")
@click.option("--nodes", "count", default=4, show_default=True)
@click.option("--profile", default="h100-sxm-8", show_default=True,
              type=click.Choice(profile_names()))
@click.option("--node-profile", "node_profiles", multiple=True, metavar="NODE:PROFILE",
              help="Repeatable. This node has another profile than --profile (a fleet of "
                   "several SKUs).")
@click.option("--smi-xml", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Replay a real `nvidia-smi -q -x` capture instead of a profile.")
@click.option("--fault", "faults", multiple=True, metavar="NODE:KIND",
              help=f"Repeatable. Kinds: {', '.join(FAULTS)}.")
@click.option("--first-address", default="127.0.0.10", show_default=True)
@click.option("--port", default=22, show_default=True)
@click.option("--driver", is_flag=True,
              help="Nodes come with the NVIDIA driver installed (default: bare, as racked).")
@click.option("--os", "os_name", default="ubuntu22.04", show_default=True,
              type=click.Choice(list(LAB_OSES)),
              help="The nodes' OS: its /etc/os-release, package manager and the names its "
                   "NVIDIA repository uses.")
@click.option("--no-register", is_flag=True, help="Do not add the nodes to the inventory.")
@click.option("--slurm", "with_slurm", is_flag=True,
              help="Also start the lab's Slurm (as `gpuctl lab slurm up`).")
@click.option("--slurm-release", type=click.Choice(list(RELEASES)), default="22.05",
              show_default=True, help="With --slurm: Debian 12's 22.05 or Debian 13's 24.11.")
@click.option("--no-bmc", is_flag=True,
              help="Give the nodes no BMC (default: a Redfish BMC per node, sushy-tools' "
                   "emulator, on the node's address).")
@click.option("--bmc-port", default=443, show_default=True, type=click.IntRange(1, 65535),
              help="The port of each node's BMC (HTTPS).")
@click.option("--burnin-python", metavar="PATH",
              help="A Python with torch and nvidia-ml-py that the nodes run the burn-in "
                   "agent with (default: gpuctl's own, if it has them).")
@json_option
@pass_ctx
def up(ctx: Ctx, count: int, profile: str, node_profiles: tuple[str, ...],
       smi_xml: Path | None, faults: tuple[str, ...],
       first_address: str, port: int, driver: bool, os_name: str, no_register: bool,
       with_slurm: bool, slurm_release: str, no_bmc: bool, bmc_port: int,
       burnin_python: str | None, as_json: bool) -> None:
    """Start N lab nodes, each with a Redfish BMC, and register them in the inventory.

    Example: gpuctl lab up --nodes 4 --fault gpu-node-03:pcie-downgrade
    """
    parsed = [parse_fault(f) for f in faults]
    own = dict(parse_node_profile(p) for p in node_profiles)
    python = check_prerequisites(os_name, with_slurm, burnin_python, not no_register,
                                 with_bmc=not no_bmc)
    the_lab = Lab(ctx.gc.paths)
    started = the_lab.up(count, profile=profile, smi_xml=smi_xml, faults=parsed,
                         first_address=first_address, port=port, driver=driver,
                         os_name=os_name, node_profiles=own)
    bmcs = None if no_bmc else LabBmcs(the_lab)
    if bmcs is not None:
        try:
            bmcs.up(started, port=bmc_port)
        except BaseException:
            the_lab.down()
            raise
        started = [the_lab.node(n.name) for n in started]
    if python is not None:
        register_lab_nodes(ctx.gc, started, str(the_lab.client_key), python,
                           bmcs.access if bmcs is not None else None)
    if with_slurm:
        _slurm_up(ctx, the_lab, quiet=as_json, release=slurm_release)
    if as_json:
        print_json(ctx.console, [n.to_dict() for n in started])
        return
    ctx.console.print(lab_table(started))
    ctx.console.print(f"client key {the_lab.client_key}" + (
        "" if no_register else "; nodes registered: next `gpuctl scan --all --accept-new`"))


@lab.command("status")
@json_option
@pass_ctx
def status(ctx: Ctx, as_json: bool) -> None:
    """Show the lab's nodes, whether they run, and their BMCs."""
    nodes = Lab(ctx.gc.paths).status()
    if as_json:
        print_json(ctx.console, [n.to_dict() for n in nodes])
    else:
        ctx.console.print(lab_table(nodes))


@lab.command("fault")
@click.argument("node")
@click.argument("kind", type=click.Choice(sorted(FAULTS)))
@pass_ctx
def fault(ctx: Ctx, node: str, kind: str) -> None:
    """Inject a fault into a running lab node.

    Example: gpuctl lab fault gpu-node-02 gpu-missing
    """
    Lab(ctx.gc.paths).fault(node, kind)
    ctx.console.print(f"{node}: {kind} ({FAULTS[kind]})")


@lab.command("repair")
@click.argument("node")
@pass_ctx
def repair(ctx: Ctx, node: str) -> None:
    """Fix a lab node's hardware faults, as a part swap would (GPUs as its profile has
    them, a clean kernel log).

    Example: gpuctl lab repair gpu-node-02
    """
    cleared = Lab(ctx.gc.paths).repair(node)
    ctx.console.print(f"{node}: repaired ({', '.join(cleared) or 'nothing was broken'})")


@lab.command("down")
@click.option("--keep-nodes", is_flag=True, help="Leave the nodes in the inventory.")
@pass_ctx
def down(ctx: Ctx, keep_nodes: bool) -> None:
    """Stop every lab node and remove its files, mounts and processes."""
    the_lab = Lab(ctx.gc.paths)
    nodes = the_lab.status()
    if not keep_nodes:
        unregister_lab_nodes(ctx.gc, nodes)
    gone = the_lab.down()
    ctx.console.print(f"lab down: {len(gone)} nodes stopped")


def _slurm_up(ctx: Ctx, the_lab: Lab, quiet: bool = False,
              release: str = "22.05") -> LabSlurmInfo:
    info = LabSlurm(the_lab).up(release)
    set_slurmd_ports(ctx.gc, info.nodes)
    if not quiet:
        ctx.err.print(f"slurm {info.release}: controller {info.controller}, "
                      f"{len(info.nodes)} slurmd; "
                      f"config {info.conf_dir}; for sinfo/squeue: "
                      "eval \"$(gpuctl lab slurm env)\"", markup=False, highlight=False)
    return info


@lab.group("slurm")
def slurm() -> None:
    """A real Slurm for the lab: slurmctld and munged here, munged and slurmd per node."""


@slurm.command("up")
@click.option("--release", type=click.Choice(list(RELEASES)), default="22.05",
              show_default=True, help="Debian 12's 22.05 or Debian 13's 24.11.")
@pass_ctx
def slurm_up(ctx: Ctx, release: str) -> None:
    """Start the lab's Slurm controller and each node's slurmd (nodes register once
    `gpuctl handoff slurm --apply` has added them).

    Example: gpuctl lab slurm up --release 24.11 && eval "$(gpuctl lab slurm env)"
    """
    _slurm_up(ctx, Lab(ctx.gc.paths), release=release)


@slurm.command("env")
@pass_ctx
def slurm_env(ctx: Ctx) -> None:
    """Print the exports that point sinfo/squeue/scontrol (and gpuctl's hand-off) at the
    lab's controller.

    Example: eval "$(gpuctl lab slurm env)"; sinfo
    """
    click.echo(LabSlurm(Lab(ctx.gc.paths)).info().exports(), nl=False)


@slurm.command("restart")
@pass_ctx
def slurm_restart(ctx: Ctx) -> None:
    """Restart the lab's slurmctld (what `systemctl restart slurmctld` is on a real
    controller; gpuctl's hand-off runs it when the node list changes)."""
    LabSlurm(Lab(ctx.gc.paths)).restart_controller()


@slurm.command("down")
@pass_ctx
def slurm_down(ctx: Ctx) -> None:
    """Stop the lab's Slurm (the nodes keep running)."""
    LabSlurm(Lab(ctx.gc.paths)).down()
    ctx.console.print("lab slurm down")
