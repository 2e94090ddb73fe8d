"""The shape every service's root settings take: one object, nested models, built once.

Each service declares `class XSettings(ServiceSettings)` with `env_prefix="MODELYARD_X_"`;
nested models (`tls: TlsSettings`, ...) read `MODELYARD_X_TLS_CERT_FILE` and so on: the
first `_` after a nested field's name splits it (`env_nested_max_split=1`), which keeps the
flat variable names the chart and docs have always used.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modelyard.limits import ServerLimits
from modelyard.tls import TlsSettings


def split_list(value: Any) -> Any:
    """A comma-separated string or a JSON list, from the environment or a flag."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


# A list setting written "a, b" (or as a JSON list); NoDecode: pydantic-settings would
# otherwise insist on JSON for list fields.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_list)]


class ServiceSettings(BaseSettings):
    """Base of the registry's, router's and worker's root settings."""

    model_config = SettingsConfigDict(
        env_nested_delimiter="_", env_nested_max_split=1, extra="ignore"
    )

    tls: TlsSettings = Field(
        default_factory=TlsSettings, description="TLS/mTLS of the port and outgoing channels."
    )
    limits: ServerLimits = Field(
        default_factory=ServerLimits, description="Bounds on what the port accepts."
    )


def env_table(settings: type[BaseSettings]) -> list[tuple[str, str, str]]:
    """(variable, default, description) of every setting, nested ones flattened: for
    `--help` epilogues and docs/operations.md, so the documentation is the code."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    rows: list[tuple[str, str, str]] = []
    for name, field in settings.model_fields.items():
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            for sub, subfield in nested.model_fields.items():
                rows.append(
                    (
                        f"{prefix}{name}_{sub}".upper(),
                        repr(subfield.default),
                        subfield.description or "",
                    )
                )
            continue
        default = "(computed)" if field.default_factory is not None else repr(field.default)
        rows.append((f"{prefix}{name}".upper(), default, field.description or ""))
    return rows
