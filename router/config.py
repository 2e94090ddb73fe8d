"""Settings of the router process, from MODELYARD_ROUTER_* variables or flags."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_ROUTER_", extra="ignore")

    address: str = Field(
        default="127.0.0.1:50050",
        description="host:port to listen on; port 0 picks a free port.",
    )
    registry_address: str = Field(
        default="127.0.0.1:50051",
        description="host:port of the registry the router resolves model names against.",
    )
    # NoDecode: pydantic-settings would otherwise insist on JSON for list fields.
    workers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Worker host:port addresses for static discovery, as a comma-separated list "
            "or a JSON list."
        ),
    )
    catalog_ttl_s: float = Field(
        default=5.0,
        ge=0,
        description="Seconds a resolved model stays cached before the registry is asked again.",
    )
    registry_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="Deadline of one call to the registry, in seconds.",
    )
    connect_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="Longest wait for a connection to a worker before trying the next one.",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Workers tried for one request before it fails (only before the first token).",
    )
    log_level: str = Field(default="INFO", description="Log level: DEBUG, INFO, WARNING or ERROR.")

    @field_validator("workers", mode="before")
    @classmethod
    def _split_workers(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("workers")
    @classmethod
    def _check_workers(cls, value: list[str]) -> list[str]:
        for address in value:
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"worker address {address!r} is not host:port")
        return value
