"""What every command shares: the context object and shared option decorators."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from rich.console import Console

from provisioner.events import merge_reports
from provisioner.handle import Gpuctl

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Ctx:
    gc: Gpuctl
    console: Console
    err: Console


pass_ctx = click.make_pass_decorator(Ctx)


def json_option(func: F) -> F:
    """``--json``: print the result as JSON instead of a table."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON.")(func)


def report_listeners(ctx: Ctx) -> None:
    """What the listeners (schedulers) did with the command's changes, on stderr: run
    when the command ends, however it ends."""
    for report in merge_reports(ctx.gc.take_reports()).values():
        for line in report.lines():
            ctx.err.print(line, markup=False, highlight=False)
