"""``gpuctl provision`` and ``gpuctl inventory export``."""

from __future__ import annotations

import click
from rich.live import Live

from provisioner.cli.common import (
    Ctx,
    complete_nodes,
    json_option,
    pass_ctx,
    wait_jobs_option,
)
from provisioner.errors import NodesFailedError
from provisioner.inventory.lifecycle import State
from provisioner.provision.inventory import FORMATS, export_inventory
from provisioner.provision.run import NodeProgress, provision_nodes
from provisioner.ui.render import print_json, progress_table, provision_summary


@click.command()
@click.argument("nodes", nargs=-1, shell_complete=complete_nodes)
@click.option("--all", "all_nodes", is_flag=True,
              help="Every node that is discovered, provisioned, failed or certified.")
@click.option("--retry-failed", is_flag=True, help="Only the nodes that failed last time.")
@click.option("--tags", help="Only these roles, e.g. driver,fabricmanager.")
@click.option("--check", is_flag=True, help="Dry run: report what would change.")
@click.option("--diff", is_flag=True, help="Show file changes.")
@click.option("--forks", default=16, show_default=True, help="Nodes worked on at once.")
@click.option("--allow-control-host", is_flag=True,
              help="Allow provisioning the machine gpuctl runs on (never rebooted).")
@click.option("--vault-password-file", type=click.Path(exists=True, dir_okay=False),
              help="For ansible-vault encrypted group_vars.")
@wait_jobs_option
@json_option
@pass_ctx
def provision(ctx: Ctx, nodes: tuple[str, ...], all_nodes: bool, retry_failed: bool,
              tags: str | None, check: bool, diff: bool, forks: int, allow_control_host: bool,
              vault_password_file: str | None, wait_jobs: float, as_json: bool) -> None:
    """Install the NVIDIA driver, CUDA, fabric manager and friends with Ansible.

    Pins come from inventory/group_vars (per SKU) and <data dir>/group_vars. A become
    password, if needed, is read from GPUCTL_BECOME_PASSWORD and never stored.
    Exit status 3 when some nodes failed (the others are provisioned).

    Example: gpuctl provision --all
    """
    live = Live(progress_table([]), console=ctx.err, transient=True, auto_refresh=False,
                redirect_stdout=False, redirect_stderr=False)

    def on_progress(rows: list[NodeProgress]) -> None:
        if not as_json:
            live.update(progress_table(rows), refresh=True)

    if as_json:
        summary = provision_nodes(
            ctx.gc, list(nodes), all_nodes=all_nodes, retry_failed=retry_failed, tags=tags,
            check=check, diff=diff, forks=forks, allow_control_host=allow_control_host,
            vault_password_file=vault_password_file, wait_jobs=wait_jobs)
        print_json(ctx.console, summary.to_dict())
    else:
        with live:
            summary = provision_nodes(
                ctx.gc, list(nodes), all_nodes=all_nodes, retry_failed=retry_failed,
                tags=tags, check=check, diff=diff, forks=forks,
                allow_control_host=allow_control_host,
                vault_password_file=vault_password_file, on_progress=on_progress,
                wait_jobs=wait_jobs)
        ctx.console.print(provision_summary(summary))
    if summary.failed:
        raise NodesFailedError(f"{len(summary.failed)} of {len(summary.nodes)} nodes failed "
                               f"(run {summary.run_id}); fix them and use --retry-failed")


@click.group()
def inventory() -> None:
    """The Ansible inventory gpuctl renders from its database."""


@inventory.command("export")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="ini", show_default=True)
@click.option("--state", type=click.Choice([s.value for s in State]))
@pass_ctx
def export(ctx: Ctx, fmt: str, state: str | None) -> None:
    """Print the inventory (the same one `gpuctl provision` uses).

    Example: gpuctl inventory export --format yaml > hosts.yml
    """
    click.echo(export_inventory(ctx.gc, fmt, state=state), nl=False)
