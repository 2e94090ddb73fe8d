"""The worker's one settings object, from MODELYARD_WORKER_* variables or flags.

Built once in `worker.main` and passed down. Nested: `tls` (MODELYARD_WORKER_TLS_*,
from the kernel's base) and `artifacts` (MODELYARD_WORKER_ARTIFACTS_*; the older
MODELYARD_ARTIFACTS_* names the chart uses are read as well).
"""

from __future__ import annotations

import os
import socket
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from modelyard.output_length import DEFAULT_EXPECTED_OUTPUT
from modelyard.settings import CommaList, ServiceSettings
from worker.artifacts.settings import ArtifactSettings

# Beyond any engine's batch: a registry record cannot make the worker hand out more slots.
MAX_PARALLEL_SEQUENCES = 256


def _default_threads() -> int:
    return os.cpu_count() or 1


class WorkerSettings(ServiceSettings):
    """Everything a worker process reads from its environment and flags."""

    model_config = SettingsConfigDict(env_prefix="MODELYARD_WORKER_", validate_by_name=True)

    address: str = Field(
        default="127.0.0.1:50061",
        description="host:port to listen on; port 0 picks a free port.",
    )
    worker_id: str = Field(
        default="",
        description="Stable id of this worker in status and routing; empty: worker-<port>.",
    )
    advertise_address: str = Field(
        default="",
        description=(
            "host:port other services reach this worker on; empty: the listen address "
            "(with this host's name when listening on all interfaces)."
        ),
    )
    threads: int = Field(
        default_factory=_default_threads,
        ge=1,
        description="CPU threads per llama.cpp engine; default: all cores.",
    )
    context_length: int = Field(
        default=4096,
        ge=16,
        description="Cap on the context window any model is loaded with, in tokens.",
    )
    batch_size: int = Field(
        default=512, ge=1, description="Prompt tokens llama.cpp evaluates per batch."
    )
    prefix_cache_share: float = Field(
        default=0.0,
        ge=0.0,
        le=4.0,
        description=(
            "How much finished requests' KV (prompt and reply) each model may keep for "
            "reuse by later requests with the same prefix (next chat turns, shared system "
            "prompts), as a multiple of its context in tokens: llama.cpp keeps it in host "
            "memory (counted in the model's memory estimate), vLLM's automatic prefix "
            "caching is on when it is above 0. 0 (the default): no reuse. Opt-in because "
            "llama.cpp's greedy output from a reused reply can differ from a cold run after "
            "a few tokens (a reply's KV comes from one-token decode steps, which round "
            "differently from a prefill); a model's load option prefix_cache_replies: '0' "
            "keeps prompt KV only, and its reuse is exact. 0.5 is a good value."
        ),
    )
    max_queued_requests: int = Field(
        default=64,
        ge=1,
        description="Requests that may wait per model before RESOURCE_EXHAUSTED.",
    )
    max_queued_tokens: int = Field(
        default=262_144,
        ge=1,
        description=(
            "Prompt + max_tokens of the requests that may wait per model (prompt + the "
            "expected output for a request that leaves max_tokens unset)."
        ),
    )
    max_output_tokens_ceiling: int = Field(
        default=0,
        ge=0,
        description=(
            "The most tokens a request that leaves max_tokens unset may generate here, below "
            "the route's and API key's ceilings the router sends; 0: to the end of the "
            "model's context."
        ),
    )
    expected_output_tokens: int = Field(
        default=DEFAULT_EXPECTED_OUTPUT,
        ge=1,
        description=(
            "Output length a request without max_tokens is planned at (queue budget, queued "
            "tokens, KV cells reserved) until the model has finished such requests: then a "
            "running mean of their lengths, capped at the context."
        ),
    )
    token_delay_ms: float = Field(
        default=0.0,
        ge=0.0,
        description=(
            "Testing and capacity drills only: pause this long after every decode step, "
            "making this worker slower than its hardware (e.g. a heterogeneous pool on "
            "one machine). 0 in production."
        ),
    )
    generate_keepalive_s: float = Field(
        default=0.5,
        ge=0.05,
        le=10.0,
        description=(
            "A Generate stream that has sent nothing for this long gets a keepalive event "
            "(with its phase: loading, queued, prefill, decoding), so routers tell a busy "
            "worker from a frozen one; keep it well under the routers' silence timeout."
        ),
    )
    stream_interval_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=1000.0,
        description=(
            "0 (the default): every token goes out as soon as it is decoded. Above 0: "
            "after the first token (never delayed), a stream's tokens go out at most this "
            "often, those decoded meanwhile in one delta, which saves the worker and its "
            "clients a message and an event-loop wake per token (on CPU, time the engine "
            "gets back: bench/results/worker.md). 20-50 ms is invisible to a reader. "
            "llama.cpp and transformers engines."
        ),
    )
    sim_engine: bool = Field(
        default=False,
        description=(
            "Offer the simulated engine `sim` (a latency model, no weights): for tests, "
            "benchmarks and capacity drills only. Its knobs are the model's "
            "load_options.extra sim_* keys."
        ),
    )
    max_parallel_sequences: int = Field(
        default=0,
        ge=0,
        le=MAX_PARALLEL_SEQUENCES,
        description=(
            "Cap on the requests one model decodes together. 0 (the default): what its "
            "engine batches (llama.cpp: 16 sequences sharing the context's KV cells; vLLM: "
            "max_num_seqs, 32, with its own scheduler deciding by KV blocks; transformers: "
            "1; sim: sim_max_sequences, else 32). A model's "
            "load_options.max_parallel_sequences caps it as well; the smaller wins."
        ),
    )
    memory_budget_bytes: int = Field(
        default=0,
        ge=0,
        description=(
            "Memory the loaded models may use together, in bytes; 0: "
            "memory_budget_fraction of physical memory."
        ),
    )
    memory_budget_fraction: float = Field(
        default=0.7, gt=0, le=1, description="Share of physical memory when the budget is 0."
    )
    keep_alive_s: float = Field(
        default=0.0,
        ge=0,
        description="Unload a model idle this many seconds (LoadModel may override); 0: never.",
    )
    load_on_demand: bool = Field(
        default=True,
        description="Load a cold model when a request with load_if_cold asks for it.",
    )
    preload: str = Field(
        default="",
        description=(
            "YAML or JSON file of models to load at start, each resolved through the "
            "catalogue: a list of 'name@version' strings, or of {model: 'name@version', "
            "pin: bool, keep_alive_s: float}."
        ),
    )
    # -- the catalogue: what this worker may load (worker/catalogue/) --------------------
    registry_address: str = Field(
        default="",
        description=(
            "host:port of the registry every model is resolved through (by name@version; "
            "a request's copy of the model is never loaded). Empty: catalog_file if set, "
            "else (with MODELYARD_CONSUL_ADDRESS) the healthy modelyard-registry Consul "
            "lists, followed: one that starts later or moves is picked up."
        ),
    )
    registry_token: str = Field(
        default="",
        description="Bearer token this worker sends on its registry calls; empty: none.",
    )
    registry_timeout_s: float = Field(
        default=3.0, gt=0, description="Deadline of one call to the registry, in seconds."
    )
    catalog_file: str = Field(
        default="",
        description=(
            "Without a registry: an operator-owned YAML or JSON list of Model messages "
            "(JSON form) that is this worker's catalogue. With neither, nothing loads."
        ),
    )
    # NoDecode: pydantic-settings would otherwise insist on JSON for a list.
    allowed_engine_options: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "load_options.extra keys this worker passes to its engines beyond each "
            "engine's own list (modelyard/engine_options.py), comma-separated; others "
            "are dropped with a warning."
        ),
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics endpoint; 0: off.",
    )
    metrics_host: str = Field(
        default="",
        description="Interface /metrics binds to; empty: the host of `address`.",
    )
    log_level: str = Field(default="INFO", description="Log level: DEBUG, INFO, WARNING or ERROR.")
    admin_token: str = Field(
        default="",
        description="Bearer token LoadModel and UnloadModel need; empty: those are open.",
    )
    api_key: str = Field(
        default="",
        description=(
            "Bearer key Generate, GetStatus and WatchStatus need (the routers send it as "
            "MODELYARD_ROUTER_WORKER_API_KEY); empty: open (unless router_identities is set)."
        ),
    )
    operator_identities: CommaList = Field(
        default_factory=list,
        description=(
            "With mTLS: certificate SAN values (e.g. spiffe://modelyard/operator) LoadModel and "
            "UnloadModel callers must present, in addition to the admin token when one is set."
        ),
    )
    ticket_keys: CommaList = Field(
        default_factory=list,
        description=(
            "Public keys of router-signed tickets, 'key_id:/path/public.pem' entries (Ed25519): "
            "a valid ticket admits one Generate for the request it names. List old and new "
            "keys while rotating. Empty: no tickets."
        ),
    )
    outcome_routers: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'Router id -> host:port, JSON, e.g. {"router-0": "router-0.routers:50050"}: where '
            "the outcome of a ticketed (direct) Generate is reported, by the router id its "
            "ticket names. Only these addresses are ever dialled; a ticket naming another "
            "router is served, its outcome not reported."
        ),
    )
    outcome_linger_ms: float = Field(
        default=20.0,
        ge=0.0,
        le=1000.0,
        description=(
            "How long the outcome reporter waits after a direct stream ends for others to "
            "end, so their reports go to the router in one ReportOutcomes call: each call "
            "costs the router a unary RPC. The router holds the stream's admission slot "
            "until its report arrives, so keep it short; 0 sends each at once."
        ),
    )
    outcome_token: str = Field(
        default="",
        description=(
            "Sent to routers on ReportOutcome (their MODELYARD_ROUTER_OUTCOME_REPORTER_TOKENS)."
        ),
    )
    router_identities: CommaList = Field(
        default_factory=list,
        description=(
            "With mTLS: certificate SAN values (e.g. spiffe://modelyard/router) Generate, "
            "GetStatus and WatchStatus callers must present."
        ),
    )
    artifacts: ArtifactSettings = Field(
        default_factory=ArtifactSettings,
        # Aliases skip env_prefix: the prefixed form, and MODELYARD_ARTIFACTS_* as before.
        validation_alias=AliasChoices("modelyard_worker_artifacts", "modelyard_artifacts"),
        description="The artifact cache (also read from MODELYARD_ARTIFACTS_*).",
    )

    @field_validator("allowed_engine_options", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def resolved_worker_id(self, port: int) -> str:
        """The configured id, or one derived from the bound port (or host name for port 0)."""
        if self.worker_id:
            return self.worker_id
        return f"worker-{port}" if port else f"worker-{socket.gethostname()}"

    def resolved_address(self, port: int) -> str:
        """The address to advertise once the server is bound to `port`."""
        if self.advertise_address:
            return self.advertise_address
        host = self.address.rpartition(":")[0].strip("[]") or "127.0.0.1"
        if host in {"0.0.0.0", "::"}:
            host = socket.gethostname()
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
