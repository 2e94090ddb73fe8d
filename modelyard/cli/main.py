"""Root of the `modelyard` command: one sub-command per job."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from modelyard.cli import eval as eval_cmd
from modelyard.cli import generate, load, models, routes, serve, stats, up
from modelyard.cli.profile import CONTEXT_ENV, config_path, default_map, load_context

app = typer.Typer(
    name="modelyard",
    help="modelyard: a multi-model LLM serving mesh (registry, router, workers over gRPC).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",  # single newlines in docstrings join, as prose should
)
# Sub-commands that start services rather than dial them.
_SERVICES = frozenset({"up", "registry", "worker", "router"})


@app.callback()
def root(
    ctx: typer.Context,
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            envvar=CONTEXT_ENV,
            help="Connection context from ~/.config/modelyard/config.yaml (or "
            "$MODELYARD_CONFIG); default: the file's current-context. Flags and environment "
            "variables win over it.",
        ),
    ] = None,
) -> None:
    if ctx.invoked_subcommand in _SERVICES:
        return  # services read their own settings; a user's CLI file must not stop them
    values = load_context(config_path(), context)
    if values:
        ctx.default_map = default_map(ctx.command, values)


app.command("up")(up.up)
app.command("generate")(generate.generate)
app.command("chat")(generate.chat)
app.command("stats")(stats.stats)
app.command("feedback")(stats.feedback)
app.command("workers")(stats.workers)
app.command("eval")(eval_cmd.evaluate)
load.register(models.app)
app.add_typer(models.app, name="models")
app.add_typer(routes.app, name="routes")
app.add_typer(serve.registry_app, name="registry")
app.add_typer(serve.worker_app, name="worker")
app.add_typer(serve.router_app, name="router")


def main() -> None:
    """The console script. Typer labels every option with its type, so a flag would read
    `--once <bool>` as if it took a value: flags are shown bare."""
    command = typer.main.get_command(app)
    _show_flags_bare(command)
    command(prog_name="modelyard")


def _show_flags_bare(command: Any) -> None:
    for param in command.params:
        _bare(param)
    make_help_option = command.get_help_option  # click builds --help per call
    command.get_help_option = lambda ctx: _bare(make_help_option(ctx))
    for sub in getattr(command, "commands", {}).values():
        _show_flags_bare(sub)


def _bare(param: Any) -> Any:
    if param is not None and getattr(param, "is_flag", False) and param.metavar is None:
        param.metavar = ""
    return param
