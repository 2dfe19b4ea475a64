"""``gpuctl handoff slurm``: slurm.conf NodeName lines and gres.conf, or with ``--apply``
the live cluster (``provisioner.slurm``); Slurm also mirrors every later state change
(drain, resume, pools) and shows its view of the nodes in ``gpuctl status``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.fleet.handoff import HandoffInput, Target, TargetOption
from provisioner.handle import Gpuctl
from provisioner.slurm.render import render_slurm
from provisioner.slurm.sync import SlurmListener, slurm_view

if TYPE_CHECKING:
    from provisioner.slurm.live import LiveHandoff


def _render(doc: HandoffInput, opts: dict[str, Any]) -> dict[str, str]:
    return render_slurm(doc.nodes, opts.get("partition"), opts.get("gres_autodetect"))


def _apply(gc: Gpuctl, names: list[str], sku: str | None, opts: dict[str, Any]
           ) -> LiveHandoff:
    # Loaded only for --apply: it brings paramiko, which `gpuctl status` must not pay for.
    from provisioner.slurm.live import live_handoff  # noqa: PLC0415

    return live_handoff(gc, names, sku, conf_dir=opts["slurm_conf_dir"],
                        partition=opts.get("partition"),
                        restart_command=opts["restart_command"], wait=opts["wait"],
                        smoke=bool(opts.get("smoke")), smoke_steps=opts["smoke_steps"],
                        slurmd_restart_command=opts.get("slurmd_restart_command"),
                        smoke_user=opts.get("smoke_user"),
                        gres_autodetect=opts.get("gres_autodetect"))


TARGET = Target(
    name="slurm", default_output="gpuctl-handoff/slurm", directory=True, render=_render,
    options=(TargetOption("partition", "Also write a PartitionName line with these nodes."),
             TargetOption("gres-autodetect", "nvml or nvidia (24.11+): gres.conf lines with "
                          "AutoDetect=, slurmd then finds files and cores itself and "
                          "gpuctl's lines only check it; with --apply, refused unless each "
                          "node's Slurm has that gpu plugin.")),
    help="slurm.conf NodeName lines (CPUs, RealMemory, Gres=gpu:<type>:<n>, Features) and "
         "gres.conf, to include in the cluster's configuration; with --apply, into the live "
         "cluster.\n\nExample: gpuctl handoff slurm -o /etc/slurm/gpuctl --partition h100"
         "\n\nExample: gpuctl handoff slurm --apply --partition h100 --smoke",
    apply=_apply,
    apply_help="Put the nodes into the live Slurm: gpuctl's block in slurm.conf and "
               "gres.conf, checked against the whole configuration first (refused, "
               "nothing written, if slurmctld would reject it), activated as the "
               "installed release documents (restart before 24.11 when nodes are added "
               "or removed, else scontrol reconfigure), confirmed, rolled back with "
               "slurmctld's own error if it did not take. New nodes join drained; each "
               "takes jobs only after registration, slurmd -C and (--smoke) the smoke "
               "job passed; a node failing a gate ends drained with the reason.",
    apply_options=(
        TargetOption("slurm-conf-dir", "With --apply: the cluster's Slurm configuration "
                     "directory.", Path, Path("/etc/slurm")),
        TargetOption("restart-command", "With --apply: how to restart slurmctld when the "
                     "node list changes (Slurm before 24.11 reads new nodes only at start).",
                     str, "systemctl restart slurmctld", envvar="GPUCTL_SLURM_RESTART"),
        TargetOption("slurmd-restart-command", "With --apply: run on each of gpuctl's "
                     "nodes (over SSH) after slurmctld was restarted for a new node list.",
                     str, "systemctl restart slurmd", envvar="GPUCTL_SLURMD_RESTART"),
        TargetOption("smoke-user", "With --apply --smoke: submit the smoke job as this "
                     "user (sites with DisableRootJobs).", str, None),
        TargetOption("wait", "With --apply: seconds to wait for the nodes.", float, 120.0,
                     limits=(1, 3600)),
        TargetOption("smoke", "With --apply: then run the training smoke job (sbatch, srun "
                     "torchrun) on the nodes; they go in service only if it passes.", bool,
                     False),
        TargetOption("smoke-steps", "Training steps of the smoke job.", int, 200,
                     limits=(20, 100000)),
    ),
    listener=SlurmListener, view=slurm_view)
