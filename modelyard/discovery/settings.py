"""How to reach the Consul agent, from MODELYARD_CONSUL_* variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DiscoverySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_CONSUL_", extra="ignore")

    address: str = Field(
        default="",
        description="host:port of the Consul agent's HTTP API; empty turns Consul discovery off.",
    )
    token: str = Field(default="", description="ACL token sent as X-Consul-Token.")
    scheme: str = Field(default="http", pattern="^https?$", description="http or https.")
    ca_file: str = Field(default="", description="CA bundle that signs the agent's certificate.")
    cert_file: str = Field(default="", description="Client certificate for mutual TLS.")
    key_file: str = Field(default="", description="Key of the client certificate.")
    datacenter: str = Field(default="", description="Datacenter to query; empty: the agent's.")
    advertise_host: str = Field(
        default="",
        description=(
            "Host other services reach this one on; empty: the listen host, or this "
            "machine's address when listening on all interfaces."
        ),
    )
    check_interval_s: float = Field(
        default=5.0, gt=0, description="How often the agent runs the gRPC health check."
    )
    check_timeout_s: float = Field(default=2.0, gt=0, description="Timeout of one health check.")
    deregister_after_s: float = Field(
        default=300.0,
        ge=0,
        description="The agent drops a service critical this long (0: never).",
    )
    deregister_wait_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description=(
            "After deregistering, how long a stopping service keeps taking calls before it "
            "stops, so the routers and clients watching Consul drop it first (a call that "
            "reaches a stopping gRPC server is cancelled)."
        ),
    )
    wait_s: float = Field(
        default=30.0, gt=0, description="Longest wait of one blocking query before it is renewed."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.address)
