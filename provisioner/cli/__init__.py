"""The ``gpuctl`` command line: parse options, call one core function, render."""

from __future__ import annotations

import importlib
import signal
import sys
import threading

import click
from rich.console import Console
from rich.markup import escape

from provisioner import __version__
from provisioner.cli.common import Ctx, report_listeners
from provisioner.errors import EXIT_USAGE, GpuctlError
from provisioner.handle import Gpuctl

# Command -> module:attribute, imported only when that command runs, so `gpuctl status`
# does not pay for Ansible, paramiko and alembic (a fleet dashboard must start fast).
COMMANDS = {
    "init": "nodes:init", "nodes": "nodes:nodes", "scan": "scan:scan", "lab": "lab:lab",
    "provision": "provision:provision", "inventory": "provision:inventory",
    "burnin": "burnin:burnin", "report": "report:report", "status": "fleet:status",
    "drain": "fleet:drain", "undrain": "fleet:undrain", "quarantine": "fleet:quarantine",
    "release": "fleet:release", "retire": "fleet:retire", "pool": "fleet:pool",
    "handoff": "fleet:handoff", "runs": "runs:runs", "skus": "runs:skus",
    "db": "db:db", "monitor": "monitor:monitor", "doctor": "doctor:doctor",
    "bmc": "bmc:bmc", "remediate": "remediate:remediate",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        command = getattr(importlib.import_module(f"provisioner.cli.{module}"), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
      gpuctl provision --all
      gpuctl burnin --all --level quick
      gpuctl report --format html
      gpuctl handoff slurm -o /etc/slurm/gpuctl
      gpuctl status --watch

    \b
    Also: gpuctl bmc power NODE [on|off|cycle] (out of band, through the BMC),
          gpuctl runs list (every run; `runs recover` after a crash),
          gpuctl skus list (the SKU catalogue)
    """
    from provisioner.targets import connect  # noqa: PLC0415

    # Every state change the command commits reaches the schedulers gpuctl handed nodes
    # to (provisioner.events); what they did is said when the command ends.
    ctx.obj = Ctx(gc=connect(Gpuctl.from_env(db)), console=Console(emoji=False,
                                                                     highlight=False),
                  err=Console(stderr=True, emoji=False, highlight=False))
    ctx.call_on_close(lambda: report_listeners(ctx.obj))


class Terminated(KeyboardInterrupt):
    """SIGTERM (``systemctl stop``, ``timeout``, a scheduler's kill): unwinds as Ctrl-C
    does, so every run settles its nodes and every cleanup runs (a hand-off drains the
    nodes it was verifying and deletes its reservation) instead of dying half way."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors for users, tracebacks only for bugs."""
    err = Console(stderr=True, emoji=False, highlight=False)
    previous = signal.signal(signal.SIGTERM, _terminate) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        # Without standalone mode click returns ctx.exit(N)'s N instead of raising.
        code = cli.main(args=argv, prog_name="gpuctl", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, Terminated):  # click turns ^C and SIGTERM into Abort
            err.print("Terminated.")
            return 143
        err.print("Aborted.")
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except GpuctlError as exc:
        err.print(f"[bold red]Error:[/] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            err.print("Terminated.")
            return 143
        err.print("Interrupted.")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
