"""``gpuctl db``."""

from __future__ import annotations

from pathlib import Path

import click

from provisioner.cli.common import Ctx, pass_ctx


@click.group()
def db() -> None:
    """The database: backups."""


@db.command("backup")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Backup file (default: <data dir>/backups/gpuctl-<time>.db).")
@pass_ctx
def backup(ctx: Ctx, output: Path | None) -> None:
    """A consistent copy of the SQLite database (SQLite's online backup API, safe while
    gpuctl runs). To restore, stop gpuctl and copy the backup over the database file.
    PostgreSQL: use pg_dump (the error says how).

    Example: gpuctl db backup -o /var/backups/gpuctl.db
    """
    path = ctx.gc.backup(output)
    ctx.console.print(f"backed up {ctx.gc.db_display} to {path}", markup=False,
                      highlight=False)
