"""The ``gpuctl`` command line: parse options, call one core function, render."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.markup import escape

from provisioner import __version__
from provisioner.cli.burnin import burnin
from provisioner.cli.common import Ctx
from provisioner.cli.fleet import (
    drain,
    handoff,
    pool,
    quarantine,
    release,
    retire,
    status,
    undrain,
)
from provisioner.cli.lab import lab
from provisioner.cli.nodes import init, nodes
from provisioner.cli.provision import inventory, provision
from provisioner.cli.report import report
from provisioner.cli.scan import scan
from provisioner.errors import EXIT_USAGE, GpuctlError
from provisioner.paths import Paths


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", metavar="URL", envvar="GPUCTL_DB",
              help="Database URL or SQLite file (default: SQLite under the data dir; "
                   "env GPUCTL_DB). Example: postgresql+psycopg://gpuctl@db/gpuctl")
@click.version_option(__version__, prog_name="gpuctl")
@click.pass_context
def cli(ctx: click.Context, db: str | None) -> None:
    """gpuctl: take bare-metal GPU servers from racked and cabled to certified.

    \b
    Typical flow:
      gpuctl init
      gpuctl nodes import hosts.ini
      gpuctl scan --all --accept-new
      gpuctl nodes list
    """
    ctx.obj = Ctx(paths=Paths.from_env(db), console=Console(emoji=False, highlight=False),
                  err=Console(stderr=True, emoji=False, highlight=False))


cli.add_command(init)
cli.add_command(nodes)
cli.add_command(scan)
cli.add_command(lab)
cli.add_command(provision)
cli.add_command(inventory)
cli.add_command(burnin)
cli.add_command(report)
for command in (status, drain, undrain, quarantine, release, retire, pool, handoff):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors for users, tracebacks only for bugs."""
    err = Console(stderr=True, emoji=False, highlight=False)
    try:
        cli.main(args=argv, prog_name="gpuctl", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        err.print("Aborted.")
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except GpuctlError as exc:
        err.print(f"[bold red]Error:[/] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("Interrupted.")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
