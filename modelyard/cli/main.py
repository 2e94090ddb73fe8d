"""Root of the `modelyard` command: one sub-command per job."""

from __future__ import annotations

import typer

from modelyard.cli import generate, load, models, routes, serve, stats, up

app = typer.Typer(
    name="modelyard",
    help="modelyard: a multi-model LLM serving mesh (registry, router, workers over gRPC).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command("up")(up.up)
app.command("generate")(generate.generate)
app.command("chat")(generate.chat)
app.command("stats")(stats.stats)
app.command("workers")(stats.workers)
load.register(models.app)
app.add_typer(models.app, name="models")
app.add_typer(routes.app, name="routes")
app.add_typer(serve.registry_app, name="registry")
app.add_typer(serve.worker_app, name="worker")
app.add_typer(serve.router_app, name="router")
