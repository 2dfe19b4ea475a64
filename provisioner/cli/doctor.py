"""``gpuctl doctor``."""

from __future__ import annotations

import click

from provisioner.cli.common import Ctx, json_option, pass_ctx
from provisioner.doctor import run_doctor
from provisioner.ui.style import print_json
from provisioner.ui.tables import doctor_lines


@click.command()
@json_option
@pass_ctx
def doctor(ctx: Ctx, as_json: bool) -> None:
    """Check this control host: Python, ansible-core, ssh and ssh-keygen, gpuctl's
    shipped files, the data dir's permissions, the database (reachable, schema current),
    the NVIDIA repository or mirror the nodes use, and Slurm's client tools and release
    when a Slurm hand-off is applied. One line per check, with the fix for each that
    fails; exits 0 only when every check passes. Changes nothing.

    Example: gpuctl doctor --json
    """
    report = run_doctor(ctx.gc)
    if as_json:
        print_json(ctx.console, report.to_dict())
    else:
        for line in doctor_lines(report):
            ctx.console.print(line, highlight=False, soft_wrap=True)
    if not report.ok:
        click.get_current_context().exit(1)
