"""`modelyard {registry,worker,router} serve`: run one service in the foreground.

Every flag has an environment variable twin (MODELYARD_<SERVICE>_<FIELD>); a flag
wins over the environment, which wins over the default.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from modelyard.cli.envdoc import epilog
from registry.config import RegistrySettings
from router.config import RouterSettings
from worker.config import WorkerSettings

registry_app = typer.Typer(help="The Registry service: the catalogue of models and routes.")
worker_app = typer.Typer(help="The Worker service: holds models in memory and streams tokens.")
router_app = typer.Typer(help="The Router service: the public API; picks model and worker.")

S = TypeVar("S", bound=BaseSettings)


def _log_level(service: str) -> Any:
    return typer.Option(
        help=f"DEBUG, INFO, WARNING or ERROR. Env: MODELYARD_{service.upper()}_LOG_LEVEL."
    )


RegistryLogLevel = Annotated[str | None, _log_level("registry")]
WorkerLogLevel = Annotated[str | None, _log_level("worker")]
RouterLogLevel = Annotated[str | None, _log_level("router")]


def build_settings(cls: type[S], **flags: Any) -> S:
    """Settings from flags over environment over defaults; a clear error for bad values."""
    try:
        return cls(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as err:
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"])
            typer.secho(f"invalid setting {where}: {e['msg']}", err=True, fg="red")
        raise typer.Exit(2) from err


@registry_app.command("serve", epilog=epilog(RegistrySettings))
def registry_serve(
    address: Annotated[
        str | None, typer.Option(help="host:port to listen on. Env: MODELYARD_REGISTRY_ADDRESS.")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="SQLAlchemy URL: sqlite+aiosqlite:///path.db (default ~/.modelyard/registry.db) "
            "or postgresql+asyncpg://... Env: MODELYARD_REGISTRY_DATABASE_URL."
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Prometheus /metrics port, 0 = off. Env: MODELYARD_REGISTRY_METRICS_PORT."
        ),
    ] = None,
    log_level: RegistryLogLevel = None,
) -> None:
    """Run the registry. Admin token for writes: MODELYARD_REGISTRY_ADMIN_TOKEN."""
    from registry.main import run

    run(
        build_settings(
            RegistrySettings,
            address=address,
            database_url=database_url,
            metrics_port=metrics_port,
            log_level=log_level,
        )
    )


@registry_app.command("migrate")
def registry_migrate(
    database_url: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL of the catalogue. Env: MODELYARD_REGISTRY_DATABASE_URL."),
    ] = None,
    to: Annotated[str, typer.Option(help="Target schema revision.")] = "head",
) -> None:
    """Apply the catalogue's schema migrations (the registry also does at start)."""
    from registry.migrate import migrate_url

    settings = build_settings(RegistrySettings, database_url=database_url)
    result = asyncio.run(migrate_url(settings.database_url, to))
    typer.echo(f"schema {result.before or 'empty'} -> {result.after}")


@worker_app.command("serve", epilog=epilog(WorkerSettings))
def worker_serve(
    address: Annotated[
        str | None, typer.Option(help="host:port to listen on. Env: MODELYARD_WORKER_ADDRESS.")
    ] = None,
    worker_id: Annotated[
        str | None, typer.Option(help="Stable worker id. Env: MODELYARD_WORKER_WORKER_ID.")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads per llama.cpp engine. Env: MODELYARD_WORKER_THREADS."),
    ] = None,
    context_length: Annotated[
        int | None,
        typer.Option(help="Cap on a model's context window. Env: MODELYARD_WORKER_CONTEXT_LENGTH."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Prometheus /metrics port, 0 = off. Env: MODELYARD_WORKER_METRICS_PORT."),
    ] = None,
    registry_address: Annotated[
        str | None,
        typer.Option(
            help="Registry host:port every model is resolved through. "
            "Env: MODELYARD_WORKER_REGISTRY_ADDRESS."
        ),
    ] = None,
    catalog_file: Annotated[
        str | None,
        typer.Option(
            help="Without a registry: YAML/JSON list of the models this worker may load. "
            "Env: MODELYARD_WORKER_CATALOG_FILE."
        ),
    ] = None,
    log_level: WorkerLogLevel = None,
) -> None:
    """Run a worker."""
    from worker.main import run

    run(
        build_settings(
            WorkerSettings,
            address=address,
            worker_id=worker_id,
            threads=threads,
            context_length=context_length,
            metrics_port=metrics_port,
            registry_address=registry_address,
            catalog_file=catalog_file,
            log_level=log_level,
        )
    )


@router_app.command("serve", epilog=epilog(RouterSettings))
def router_serve(
    address: Annotated[
        str | None, typer.Option(help="host:port to listen on. Env: MODELYARD_ROUTER_ADDRESS.")
    ] = None,
    registry_address: Annotated[
        str | None,
        typer.Option(help="Registry host:port. Env: MODELYARD_ROUTER_REGISTRY_ADDRESS."),
    ] = None,
    worker: Annotated[
        list[str] | None,
        typer.Option(
            "--worker",
            help="Worker host:port for static discovery; repeat for several. "
            "Env: MODELYARD_ROUTER_WORKERS (comma-separated or a JSON list).",
        ),
    ] = None,
    http_address: Annotated[
        str | None,
        typer.Option(
            help="host:port of the OpenAI-compatible HTTP front; empty = off. "
            "Env: MODELYARD_ROUTER_HTTP_ADDRESS."
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Prometheus /metrics port, 0 = off. Env: MODELYARD_ROUTER_METRICS_PORT."),
    ] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            help="Workers tried per model before the first token. "
            "Env: MODELYARD_ROUTER_MAX_ATTEMPTS."
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            help="Router processes sharing the ports (SO_REUSEPORT), one per core to use. "
            "Env: MODELYARD_ROUTER_PROCESSES."
        ),
    ] = None,
    log_level: RouterLogLevel = None,
) -> None:
    """Run a router. Consul discovery: MODELYARD_CONSUL_ADDRESS (see docs/operations.md)."""
    from router.processes import run_router

    run_router(
        build_settings(
            RouterSettings,
            address=address,
            registry_address=registry_address,
            workers=worker or None,
            http_address=http_address,
            metrics_port=metrics_port,
            max_attempts=max_attempts,
            processes=processes,
            log_level=log_level,
        )
    )
