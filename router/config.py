"""Settings of the router process, from MODELYARD_ROUTER_* variables or flags: one root
object, built once in `router.main` and passed down."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from modelyard.settings import CommaList, ServiceSettings
from router.client_policy import ClientPolicy, priority_of


class RouterSettings(ServiceSettings):
    """The router's one settings object (MODELYARD_ROUTER_*, TLS under _TLS_*)."""

    model_config = SettingsConfigDict(env_prefix="MODELYARD_ROUTER_")

    address: str = Field(
        default="127.0.0.1:50050",
        description="host:port to listen on; port 0 picks a free port.",
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Router processes sharing the ports (SO_REUSEPORT), each with its own loop, "
            "status watches and limits (max_in_flight holds per process); fixed ports only; "
            "process i serves /metrics on metrics_port + i; not with ticket_key."
        ),
    )
    registry_address: str = Field(
        default="127.0.0.1:50051",
        description="host:port of the registry the router resolves model names against.",
    )
    workers: CommaList = Field(
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
    silence_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description=(
            "Before the first token: longest a worker that sends keepalives may send nothing; "
            "then the attempt is abandoned, retried on the next candidate and the worker "
            "ejected (its breaker opens). Cold loads and queue waits send keepalives."
        ),
    )
    stream_silence_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "After the first token: longest a worker that sends keepalives may send nothing; "
            "then the stream ends UNAVAILABLE (text was sent: no retry) and the worker is "
            "ejected. Longer than silence_timeout_s: a false alarm here costs the stream."
        ),
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Workers tried for one request before it fails (only before the first token).",
    )
    http_address: str = Field(
        default="",
        description=(
            "host:port of the OpenAI-compatible HTTP front (/v1/chat/completions, ...); "
            "empty turns it off."
        ),
    )
    http_max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        description=(
            "Largest request body the HTTP front accepts, in bytes; larger is 413, "
            "refused before it is read."
        ),
    )
    http_ignore_unknown_params: bool = Field(
        default=False,
        description=(
            "The HTTP front ignores body parameters it does not know (listing them in the "
            "x-modelyard-ignored-params response header) instead of answering 400."
        ),
    )
    http_max_concurrency: int = Field(
        default=256,
        ge=1,
        description="Requests in flight on the HTTP front; more are answered 429 at once.",
    )
    max_total_attempts: int = Field(
        default=6,
        ge=1,
        description=(
            "Attempts for one request across the chosen model and the route's fallback "
            "models (each model gets at most max_attempts)."
        ),
    )
    profile_weights: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description=(
            'Scorer weights per objective, JSON, e.g. {"latency": {"latency": 1, "queue": 0.2}}; '
            "scorers: queue, latency, cost, swap, affinity, prefix; objectives not named keep "
            "their defaults (router/scheduling/profiles.py, docs/operations.md)."
        ),
    )
    profile_pickers: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'Picker per objective, JSON, e.g. {"load": "power_of_two"}: max_score, '
            "power_of_two or round_robin."
        ),
    )
    scheduling_sample_size: int = Field(
        default=16,
        ge=0,
        description=(
            "Candidates a scheduling cycle filters and scores when the pool is larger: prefix "
            "holders, the session's worker and warm copies first, then a random sample "
            "(router/scheduling/sample.py); more are drawn only if too few pass the filters. "
            "0 scores every candidate."
        ),
    )
    breaker_failures: int = Field(
        default=5, ge=1, description="Consecutive failures that open a worker's breaker."
    )
    breaker_error_rate: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Error rate over the last 20 calls (10 at least) that opens a breaker.",
    )
    breaker_open_s: float = Field(
        default=5.0, gt=0, description="Seconds a breaker stays open before half-open probes."
    )
    reference_usd_per_1k_tokens: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Reference price (e.g. a hosted API's) per 1k tokens; GetRoutingStats reports "
            "savings against it. 0: no savings reported."
        ),
    )
    feedback_max_entries: int = Field(
        default=100_000, ge=1, description="Recent request ids kept for RecordFeedback."
    )
    feedback_ttl_s: float = Field(
        default=3600.0, gt=0, description="Seconds a request id stays open to RecordFeedback."
    )
    response_cache_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description=(
            "Bytes of answers the in-process response cache holds, least recently used "
            "dropped first (routes opt in with response_cache). 0: no response cache."
        ),
    )
    response_cache_max_entry_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        description="Largest single answer the response cache keeps (in-process or shared).",
    )
    response_cache_redis_url: str = Field(
        default="",
        description=(
            "redis:// or rediss:// URL of a Redis-compatible store the router replicas share "
            "for the response cache (then no in-process cache). Empty: in-process only."
        ),
    )
    response_cache_redis_prefix: str = Field(
        default="modelyard:response:",
        description="Prefix of the response cache's keys in the store.",
    )
    response_cache_timeout_s: float = Field(
        default=0.25,
        gt=0,
        description=(
            "Deadline of one response cache lookup or store; past it (or on any store "
            "error) the request is served by a worker and the failure counted."
        ),
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0: off."
    )
    metrics_host: str = Field(
        default="",
        description="Interface /metrics binds to; empty: the host of `address`.",
    )
    log_level: str = Field(default="INFO", description="Log level: DEBUG, INFO, WARNING or ERROR.")
    api_keys: CommaList = Field(
        default_factory=list,
        description=(
            "Client API keys, comma-separated 'name:key' entries (or a JSON list): every "
            "RouterService call and every OpenAI front request must send one as "
            "'authorization: Bearer <key>'; logs and usage name the key. Empty: no key needed."
        ),
    )
    client_identities: CommaList = Field(
        default_factory=list,
        description=(
            "With mTLS: certificate SAN values (e.g. spiffe://modelyard/client) a client must "
            "present, in addition to an API key when keys are set. Empty: any certificate."
        ),
    )
    operator_keys: CommaList = Field(
        default_factory=list,
        description=(
            "Operator API keys, 'name:key' entries: GetRoutingStats, ListWorkers, /v1/stats "
            "(the whole mesh's traffic and its workers) need one once the router has client "
            "keys or identities; client keys are refused there. Operator keys may call "
            "everything clients can. Empty on a router with client keys: nobody reads them."
        ),
    )
    max_in_flight: int = Field(
        default=1024,
        ge=1,
        description=(
            "Generations this router runs at once; beyond it new ones are RESOURCE_EXHAUSTED "
            "at once with a retry hint, so admitted ones keep their latency."
        ),
    )
    max_in_flight_per_key: int = Field(
        default=0,
        ge=0,
        description="Generations one API key may have in flight; 0: only max_in_flight.",
    )
    priority_ceiling: str = Field(
        default="PRIORITY_HIGH",
        description=(
            "Highest priority a client may ask for (PRIORITY_CRITICAL sheds other clients' "
            "requests); above it a request is PERMISSION_DENIED."
        ),
    )
    key_priority_ceilings: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'Per API key name, JSON, e.g. {"ops": "PRIORITY_CRITICAL", "batch": "PRIORITY_LOW"}.'
        ),
    )
    max_output_tokens_ceiling: int = Field(
        default=0,
        ge=0,
        description=(
            "The most tokens a request that leaves max_tokens unset may generate (it otherwise "
            "runs to the end of the model's context); a route's ceiling may lower it. 0: none "
            "here. Requests that set max_tokens are not capped."
        ),
    )
    key_max_output_tokens_ceilings: dict[str, int] = Field(
        default_factory=dict,
        description=(
            'Per API key name, JSON, e.g. {"batch": 512}: replaces max_output_tokens_ceiling '
            "for that key (0: none)."
        ),
    )
    registry_token: str = Field(
        default="",
        description="Sent to the registry as its reader token (MODELYARD_REGISTRY_READER_TOKENS).",
    )
    outcome_token: str = Field(
        default="",
        description=(
            "Sent to the registry as its outcome-writer token on RecordOutcomes and "
            "AttachFeedback (MODELYARD_REGISTRY_OUTCOME_WRITER_TOKENS); never the admin token."
        ),
    )
    outcome_buffer: int = Field(
        default=10_000,
        ge=0,
        description=(
            "Finished requests' outcomes buffered for the registry while it is away; when full "
            "the oldest is dropped (modelyard_router_outcomes_dropped_total). 0: no outcomes "
            "are shipped, stats and feedback stay per replica."
        ),
    )
    outcome_flush_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Outcomes are shipped when a batch of 500 is full or this often.",
    )
    outcome_feedback_wait_s: float = Field(
        default=3.0,
        ge=0,
        le=60,
        description=(
            "RecordFeedback retries a NOT_FOUND from the registry this long: the replica that "
            "served the request may not have shipped its outcome yet."
        ),
    )
    router_id: str = Field(
        default="",
        description="This replica's name in stored outcomes; empty: the host name.",
    )
    ticket_key: str = Field(
        default="",
        description=(
            "'key_id:/path/private.pem' (Ed25519): signs the tickets PickWorker issues for "
            "direct streams; workers verify them with the public key in "
            "MODELYARD_WORKER_TICKET_KEYS. Empty: PickWorker is FAILED_PRECONDITION."
        ),
    )
    ticket_ttl_s: float = Field(
        default=30.0,
        gt=0,
        le=300,
        description="Seconds a ticket admits its worker call (redeemed when the call starts).",
    )
    outcome_reporter_tokens: CommaList = Field(
        default_factory=list,
        description=(
            "Tokens of workers reporting direct streams' outcomes (ReportOutcome), 'name:token' "
            "entries; workers send MODELYARD_WORKER_OUTCOME_TOKEN. Clients may not report. "
            "Empty on a router with client keys: nobody may report."
        ),
    )
    outcome_reporter_identities: CommaList = Field(
        default_factory=list,
        description="With mTLS: certificate SAN values of workers that may call ReportOutcome.",
    )
    worker_api_key: str = Field(
        default="",
        description=(
            "Sent to workers as 'authorization: Bearer <key>' (their MODELYARD_WORKER_API_KEY)."
        ),
    )

    @field_validator("priority_ceiling")
    @classmethod
    def _check_ceiling(cls, value: str) -> str:
        priority_of(value)
        return value

    @field_validator("key_max_output_tokens_ceilings")
    @classmethod
    def _check_key_output_ceilings(cls, value: dict[str, int]) -> dict[str, int]:
        bad = sorted(key for key, tokens in value.items() if tokens < 0)
        if bad:
            raise ValueError(f"ceilings must be >= 0 tokens; negative for {', '.join(bad)}")
        return value

    @field_validator("key_priority_ceilings")
    @classmethod
    def _check_key_ceilings(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value.values():
            priority_of(name)
        return value

    def client_policy(self) -> ClientPolicy:
        return ClientPolicy(
            priority_of(self.priority_ceiling),
            {key: priority_of(name) for key, name in self.key_priority_ceilings.items()},
            output_ceiling=self.max_output_tokens_ceiling,
            key_output_ceilings=self.key_max_output_tokens_ceilings,
        )

    @field_validator("workers")
    @classmethod
    def _check_workers(cls, value: list[str]) -> list[str]:
        for address in value:
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"worker address {address!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _check_processes(self) -> RouterSettings:
        if self.processes == 1:
            return self
        fixed = [("address", self.address)]
        if self.http_address:
            fixed.append(("http_address", self.http_address))
        for name, address in fixed:
            port = address.rpartition(":")[2]
            if not port.isdigit() or int(port) == 0:
                raise ValueError(f"processes > 1 shares one port: {name} needs a fixed port")
        if self.ticket_key:
            raise ValueError(
                "processes > 1 does not work with ticket_key (direct streams): a worker's "
                "outcome report must reach the process that issued its ticket; run more "
                "router replicas instead"
            )
        return self
