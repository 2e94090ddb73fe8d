"""A stand-in for the Consul agent's HTTP API, for tests only (never shipped).

No Consul agent can be installed on the build machines, so the tests point the real
py-consul client at this. It follows Consul's documented behaviour for what modelyard
uses: `/v1/agent/service/register` (Check/Checks, GRPC and TTL checks, keys decoded
case-insensitively and in snake_case as the agent does), `/v1/agent/service/deregister`,
`/v1/agent/services`, `/v1/agent/checks`, `/v1/agent/check/{pass,warn,fail}`,
`/v1/health/service/<name>` (`passing`, blocking `index`/`wait`, `X-Consul-Index`),
`/v1/catalog/services`, ACL tokens (`X-Consul-Token`; anonymous reads are filtered,
anonymous writes are refused, unknown tokens get "ACL not found") and `dc`.

GRPC checks are really run against the service's grpc.health.v1, at the registered
interval, the first after a random stagger (as the agent does); checks start critical.
`DeregisterCriticalServiceAfter` is honoured as Consul does: never sooner than one
minute, by a reaper that runs every 30 seconds (both can be scaled down for a test that
wants to see reaping, by passing `min_deregister_after_s` and `reap_interval_s`).
`stop()`/`start()` keeps the state (an agent with a data dir); `restart(forget=True)` is
an agent that comes back without it: no services, no checks, a lower index.
Every blocking read is recorded (`reads`) so tests can check what the client sent.
The agent runs on its own thread and event loop so sync and async tests can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
MAX_WAIT_S = 600.0  # Consul caps wait at 10 minutes
DEFAULT_WAIT_S = 300.0
# Consul: "The minimum timeout is 1 minute, and the process that reaps critical services
# runs every 30 seconds" (DeregisterCriticalServiceAfter, agent/structs and agent.reapServices).
MIN_DEREGISTER_AFTER_S = 60.0
REAP_INTERVAL_S = 30.0


def parse_duration(text: object) -> float:
    """A Go duration ("10s", "1m30s", "250ms"; a bare number is nanoseconds)."""
    if isinstance(text, int | float):
        return float(text) / 1e9
    value = str(text).strip()
    if not value:
        return 0.0
    if value.isdigit():
        return int(value) / 1e9
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f'time: invalid duration "{value}"')
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _norm(data: Mapping[str, Any]) -> dict[str, Any]:
    """Keys lower-cased without underscores: the agent takes "GRPCUseTLS" and "grpc_use_tls"."""
    return {k.replace("_", "").lower(): v for k, v in data.items()}


@dataclass
class _Check:
    check_id: str
    name: str
    service_id: str
    service_name: str
    kind: str  # "grpc", "ttl" or "" (status set by hand)
    definition: dict[str, Any]
    status: str = CRITICAL
    output: str = ""
    create_index: int = 0
    modify_index: int = 0
    critical_since: float = field(default_factory=time.monotonic)
    ttl_deadline: float = 0.0

    def as_json(self, node: str, tags: list[str]) -> dict[str, Any]:
        return {
            "Node": node,
            "CheckID": self.check_id,
            "Name": self.name,
            "Status": self.status,
            "Notes": "",
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": tags,
            "Type": self.kind,
            "Definition": {},
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class BlockingRead:
    """One read of an endpoint that supports blocking queries, as the stand-in saw it."""

    path: str
    index: int  # the `index` the client sent; 0 when it sent none (not a blocking query)
    wait_s: float  # the `wait` it asked for (0: none)
    returned: int = 0  # X-Consul-Index of the answer; 0 while the read is still held
    done: bool = False


def due_for_reaping(
    checks: Collection[_Check], now: float, min_after_s: float = MIN_DEREGISTER_AFTER_S
) -> list[str]:
    """Ids of the services one of whose checks has been critical for longer than its
    DeregisterCriticalServiceAfter (raised to Consul's minimum), sorted."""
    due: set[str] = set()
    for check in checks:
        after = parse_duration(check.definition.get("deregistercriticalserviceafter", ""))
        if after <= 0 or check.status != CRITICAL or not check.service_id:
            continue
        if now - check.critical_since > max(after, min_after_s):
            due.add(check.service_id)
    return sorted(due)


@dataclass
class _State:
    """What the agent knows; it survives stop/start (an agent with persisted state)."""

    index: int = 10
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, _Check] = field(default_factory=dict)
    name_index: dict[str, int] = field(default_factory=dict)
    services_index: int = 1


class ConsulAgentStandIn:
    """`start()` it, point py-consul at `host`/`port`, `stop()` it to simulate an outage."""

    def __init__(
        self,
        *,
        acl_tokens: Collection[str] | None = None,
        port: int = 0,
        node: str = "standin-node",
        datacenter: str = "dc1",
        min_deregister_after_s: float = MIN_DEREGISTER_AFTER_S,
        reap_interval_s: float = REAP_INTERVAL_S,
    ) -> None:
        self.acl_tokens = None if acl_tokens is None else set(acl_tokens)
        self.port = port
        self.host = "127.0.0.1"
        self.node = node
        self.datacenter = datacenter
        self.min_deregister_after_s = min_deregister_after_s
        self.reap_interval_s = reap_interval_s
        self.state = _State()
        # (method, path, token or "") of every request, for tests that check headers.
        self.requests: list[tuple[str, str, str]] = []
        # Every read of /v1/health/service/* and /v1/catalog/services, in arrival order.
        self.reads: list[BlockingRead] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.restarted_at_index = 0  # the index a restart started the agent from
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._changed: asyncio.Condition | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- lifecycle (called from the test's thread) ---------------------------------

    def start(self) -> ConsulAgentStandIn:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._serve())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="consul-standin", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the Consul stand-in did not start")
        return self

    def stop(self) -> None:
        """Close the port (connections are refused); the state is kept for `start()`."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None

    def restart(self, *, forget: bool) -> None:
        """Stop and start on the same port; `forget`: without the state (no data dir).

        A forgetting agent starts over with no services and a fresh, lower index, as a
        Consul agent restarted without its data dir does: services must register again.
        """
        self.stop()
        if forget:
            self.state = _State()
        self.restarted_at_index = self.state.index
        self.start()

    def __enter__(self) -> ConsulAgentStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Any, *args: Any) -> Any:
        assert self._loop is not None, "the stand-in is not running"

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # -- helpers for tests ---------------------------------------------------------

    def set_check(self, check_id: str, status: str, output: str = "") -> None:
        """Set a check's status as the agent would after running it."""
        self._call(self._set_status, self.state.checks[check_id], status, output)

    def service_ids(self, name: str | None = None) -> list[str]:
        return sorted(
            sid for sid, s in self.state.services.items() if name is None or s["Service"] == name
        )

    def reads_of(self, path: str) -> list[BlockingRead]:
        return [r for r in list(self.reads) if r.path == path]

    def checks_of(self, service_id: str) -> dict[str, str]:
        checks = self.state.checks.values()
        return {c.check_id: c.status for c in checks if c.service_id == service_id}

    # -- server --------------------------------------------------------------------

    async def _serve(self) -> None:
        self._changed = asyncio.Condition()
        app = web.Application(middlewares=[self._record])
        app.router.add_put("/v1/agent/service/register", self._register)
        app.router.add_put("/v1/agent/service/deregister/{id}", self._deregister)
        app.router.add_get("/v1/agent/services", self._agent_services)
        app.router.add_get("/v1/agent/checks", self._agent_checks)
        app.router.add_put("/v1/agent/check/{verb:pass|warn|fail}/{id}", self._ttl_update)
        app.router.add_get("/v1/health/service/{name}", self._health_service)
        app.router.add_get("/v1/catalog/services", self._catalog_services)
        app.router.add_get("/v1/status/leader", self._leader)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if not self.port:
            server = site._server
            assert isinstance(server, asyncio.base_events.Server)
            self.port = int(server.sockets[0].getsockname()[1])
        for check in self.state.checks.values():
            self._start_check(check)
        self._tasks["<reaper>"] = asyncio.get_running_loop().create_task(self._reap())

    async def _shutdown(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        token = _token_of(request)
        self.requests.append((request.method, request.path, token))
        if self.acl_tokens is not None and token and token not in self.acl_tokens:
            return web.Response(status=403, text="ACL not found")
        dc = request.query.get("dc")
        if dc and dc != self.datacenter:
            return web.Response(status=500, text="No path to datacenter")
        response: web.StreamResponse = await handler(request)
        return response

    def _allowed(self, request: web.Request) -> bool:
        """ACLs off, or a known token (anonymous has no rights under default deny)."""
        return self.acl_tokens is None or _token_of(request) in self.acl_tokens

    def _bump(self, *names: str) -> int:
        self.state.index += 1
        for name in names:
            self.state.name_index[name] = self.state.index
        return self.state.index

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    def _set_status(self, check: _Check, status: str, output: str = "") -> None:
        check.output = output
        if status == check.status:
            return  # the agent syncs to the catalogue only on change
        if status == CRITICAL:
            check.critical_since = time.monotonic()
        check.status = status
        check.modify_index = self._bump(check.service_name)
        asyncio.get_running_loop().create_task(self._notify())

    # -- agent endpoints -----------------------------------------------------------

    async def _register(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return web.Response(status=403, text="Permission denied")
        try:
            body = _norm(json.loads(await request.text() or "{}"))
        except json.JSONDecodeError as err:
            return web.Response(status=400, text=f"Request decode failed: {err}")
        name = body.get("name") or ""
        if not name:
            return web.Response(status=400, text="Missing service name")
        meta = body.get("meta") or {}
        for key, value in meta.items():
            if not _META_KEY.match(key) or len(value) > 512:
                return web.Response(status=400, text=f"Invalid Service Meta: key {key!r}")
        service_id = body.get("id") or name
        definitions = [body["check"]] if body.get("check") else []
        definitions += list(body.get("checks") or [])
        checks: list[_Check] = []
        for n, raw in enumerate(definitions, start=1):
            d = _norm(raw)
            kind = "grpc" if d.get("grpc") else "ttl" if d.get("ttl") else ""
            try:
                if kind == "grpc" and parse_duration(d.get("interval", "")) <= 0:
                    raise ValueError("Interval must be > 0 for Script, HTTP, TCP or GRPC checks")
                for key in ("interval", "timeout", "ttl", "deregistercriticalserviceafter"):
                    parse_duration(d.get(key, ""))
            except ValueError as err:
                return web.Response(status=400, text=f"Invalid check: {err}")
            suffix = f":{n}" if len(definitions) > 1 else ""
            check_id = d.get("checkid") or d.get("id") or f"service:{service_id}{suffix}"
            checks.append(
                _Check(
                    check_id=check_id,
                    name=d.get("name") or f"Service '{name}' check",
                    service_id=service_id,
                    service_name=name,
                    kind=kind,
                    definition=d,
                    status=d.get("status") or CRITICAL,
                )
            )
        previous = self.state.services.get(service_id)
        index = self._bump(name, *([previous["Service"]] if previous else []))
        self.state.services[service_id] = {
            "ID": service_id,
            "Service": name,
            "Tags": list(body.get("tags") or []),
            "Address": body.get("address") or "",
            "Meta": dict(meta),
            "Port": int(body.get("port") or 0),
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": bool(body.get("enabletagoverride")),
            "Datacenter": self.datacenter,
            "CreateIndex": previous["CreateIndex"] if previous else index,
            "ModifyIndex": index,
        }
        if previous is None or previous["Service"] != name:
            self.state.services_index = index
        replace = request.query.get("replace-existing-checks") in ("1", "true")
        for old in [c for c in self.state.checks.values() if c.service_id == service_id]:
            if replace or old.check_id in {c.check_id for c in checks}:
                self._drop_check(old.check_id)
        for check in checks:
            check.create_index = check.modify_index = index
            self.state.checks[check.check_id] = check
            self._start_check(check)
        await self._notify()
        return web.Response(status=200)

    async def _deregister(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return web.Response(status=403, text="Permission denied")
        service_id = request.match_info["id"]
        if service_id not in self.state.services:
            return web.Response(status=404, text=f'Unknown service ID "{service_id}"')
        self._remove_service(service_id)
        await self._notify()
        return web.Response(status=200)

    def _remove_service(self, service_id: str) -> None:
        service = self.state.services.pop(service_id)
        for check in [c for c in self.state.checks.values() if c.service_id == service_id]:
            self._drop_check(check.check_id)
        self.state.services_index = self._bump(service["Service"])

    def _drop_check(self, check_id: str) -> None:
        self.state.checks.pop(check_id, None)
        task = self._tasks.pop(check_id, None)
        if task is not None:
            task.cancel()

    async def _agent_services(self, request: web.Request) -> web.Response:
        visible = self.state.services if self._allowed(request) else {}
        return _json({sid: {**s} for sid, s in visible.items()})

    async def _agent_checks(self, request: web.Request) -> web.Response:
        visible = self.state.checks.values() if self._allowed(request) else []
        return _json({c.check_id: c.as_json(self.node, []) for c in visible})

    async def _ttl_update(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return web.Response(status=403, text="Permission denied")
        check = self.state.checks.get(request.match_info["id"])
        if check is None:
            return web.Response(status=404, text=f'Unknown check ID "{request.match_info["id"]}"')
        status = {"pass": PASSING, "warn": WARNING, "fail": CRITICAL}[request.match_info["verb"]]
        if check.kind == "ttl":
            check.ttl_deadline = time.monotonic() + parse_duration(check.definition["ttl"])
        self._set_status(check, status, request.query.get("note", ""))
        return web.Response(status=200)

    async def _leader(self, request: web.Request) -> web.Response:
        return _json("127.0.0.1:8300")

    # -- blocking reads ------------------------------------------------------------

    async def _block(self, request: web.Request, current: Any) -> BlockingRead:
        """Wait while the caller's index is current, up to wait (plus up to wait/16 jitter)."""
        assert self._changed is not None
        try:
            index = int(request.query.get("index", "0") or 0)
            asked = parse_duration(request.query.get("wait", ""))
        except ValueError as err:
            raise web.HTTPBadRequest(text=str(err)) from err
        read = BlockingRead(request.path, index, asked)
        self.reads.append(read)
        wait = asked or DEFAULT_WAIT_S
        if index <= 0:
            return read
        wait = min(wait, MAX_WAIT_S)
        deadline = time.monotonic() + wait + random.uniform(0, wait / 16)
        async with self._changed:
            while current() <= index:
                left = deadline - time.monotonic()
                if left <= 0:
                    return read
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
        return read

    async def _health_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        read = await self._block(request, lambda: self.state.name_index.get(name, 1))
        passing = "passing" in request.query and request.query["passing"] not in ("0", "false")
        tags = request.query.getall("tag", [])
        entries: list[dict[str, Any]] = []
        for service in self.state.services.values():
            if service["Service"] != name or not set(tags) <= set(service["Tags"]):
                continue
            checks = [self._serf_health()] + [
                c.as_json(self.node, service["Tags"])
                for c in self.state.checks.values()
                if c.service_id == service["ID"]
            ]
            if passing and any(c["Status"] != PASSING for c in checks):
                continue
            entries.append({"Node": self._node(), "Service": {**service}, "Checks": checks})
        filtered = not self._allowed(request)
        read.returned, read.done = self.state.name_index.get(name, 1), True
        return _json([] if filtered else entries, index=read.returned, filtered=filtered)

    async def _catalog_services(self, request: web.Request) -> web.Response:
        read = await self._block(request, lambda: self.state.services_index)
        names: dict[str, list[str]] = {"consul": []}
        for service in self.state.services.values():
            names.setdefault(service["Service"], [])
            names[service["Service"]] = sorted({*names[service["Service"]], *service["Tags"]})
        filtered = not self._allowed(request)
        read.returned, read.done = self.state.services_index, True
        return _json({} if filtered else names, index=read.returned, filtered=filtered)

    def _node(self) -> dict[str, Any]:
        return {
            "ID": "00000000-0000-0000-0000-000000000001",
            "Node": self.node,
            "Address": "127.0.0.1",
            "Datacenter": self.datacenter,
            "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
            "Meta": {},
            "CreateIndex": 5,
            "ModifyIndex": 5,
        }

    def _serf_health(self) -> dict[str, Any]:
        return {
            "Node": self.node,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": PASSING,
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "Type": "",
            "CreateIndex": 5,
            "ModifyIndex": 5,
        }

    # -- running checks ------------------------------------------------------------

    def _start_check(self, check: _Check) -> None:
        if check.kind == "grpc":
            self._tasks[check.check_id] = asyncio.get_running_loop().create_task(
                self._run_grpc_check(check)
            )
        elif check.kind == "ttl":
            check.ttl_deadline = time.monotonic() + parse_duration(check.definition["ttl"])
            self._tasks[check.check_id] = asyncio.get_running_loop().create_task(
                self._expire_ttl(check)
            )

    async def _run_grpc_check(self, check: _Check) -> None:
        d = check.definition
        interval = parse_duration(d["interval"])
        timeout = parse_duration(d.get("timeout", "")) or 10.0
        target, _, service = str(d["grpc"]).partition("/")
        await asyncio.sleep(random.uniform(0, interval))  # the agent staggers first runs
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = await stub.Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=timeout
                    )
                    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
                    status = PASSING if serving else CRITICAL
                    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                    output = f"gRPC check {d['grpc']}: {name}"
                except grpc.aio.AioRpcError as err:
                    status, output = CRITICAL, f"gRPC check {d['grpc']}: {err.code().name}"
                self._set_status(check, status, output)
                await asyncio.sleep(interval)

    async def _reap(self) -> None:
        """Consul's reaper: every reap interval, drop services critical for too long."""
        while True:
            await asyncio.sleep(self.reap_interval_s)
            due = due_for_reaping(
                list(self.state.checks.values()), time.monotonic(), self.min_deregister_after_s
            )
            for service_id in due:
                if service_id in self.state.services:
                    self._remove_service(service_id)
            if due:
                await self._notify()

    async def _expire_ttl(self, check: _Check) -> None:
        while True:
            await asyncio.sleep(max(0.01, check.ttl_deadline - time.monotonic()))
            if time.monotonic() >= check.ttl_deadline:
                self._set_status(check, CRITICAL, "TTL expired")
                check.ttl_deadline = time.monotonic() + 3600


def _token_of(request: web.Request) -> str:
    token = request.headers.get("X-Consul-Token") or request.query.get("token", "")
    auth = request.headers.get("Authorization", "")
    if not token and auth.lower().startswith("bearer "):
        token = auth[7:]
    return token


def _json(data: Any, *, index: int | None = None, filtered: bool = False) -> web.Response:
    headers = {"X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}
    if index is not None:
        headers["X-Consul-Index"] = str(index)
    if filtered:
        headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
    return web.json_response(data, headers=headers)
