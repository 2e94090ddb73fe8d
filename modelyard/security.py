"""Transitional: the worker's gate until it builds its own from
`modelyard.auth` (issue 9). New code imports `modelyard.auth` and `modelyard.tls`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelyard.auth import (
    AUTHORIZATION,
    BearerGate,
    Guard,
    bearer_interceptors,
    bearer_metadata,
    bearer_token,
)
from modelyard.tls import TlsSettings, secure_or_insecure_channel

__all__ = [
    "AUTHORIZATION",
    "BearerGate",
    "Guard",
    "TlsSettings",
    "WorkerAuthSettings",
    "bearer_interceptors",
    "bearer_metadata",
    "bearer_token",
    "secure_or_insecure_channel",
    "worker_gate",
]

WORKER_SERVICE = "/modelyard.v1.WorkerService/"
WORKER_ADMIN_METHODS = (f"{WORKER_SERVICE}LoadModel", f"{WORKER_SERVICE}UnloadModel")


class WorkerAuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_WORKER_", extra="ignore")

    admin_token: str = Field(default="", description="Needed by LoadModel and UnloadModel.")
    api_key: str = Field(
        default="", description="Needed by Generate, GetStatus and WatchStatus (the router's)."
    )


def worker_gate(settings: WorkerAuthSettings | None = None) -> BearerGate:
    s = settings if settings is not None else WorkerAuthSettings()
    return BearerGate(
        [
            Guard(
                WORKER_ADMIN_METHODS,
                (s.admin_token,) if s.admin_token else (),
                "the worker's admin token",
                "the value of the worker's MODELYARD_WORKER_ADMIN_TOKEN",
            ),
            Guard(
                (WORKER_SERVICE,),
                (s.api_key,) if s.api_key else (),
                "the worker's API key",
                "routers: MODELYARD_ROUTER_WORKER_API_KEY",
            ),
        ]
    )
