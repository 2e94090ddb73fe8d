"""The artifact store against a real local HTTP server and the local filesystem."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modelyard.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from modelyard.v1 import model_pb2
from worker.artifacts import ArtifactSettings, ArtifactStore, parse_uri
from worker.artifacts import files as artifact_files


@dataclass
class Blobs:
    """What the test server serves, and how it misbehaves."""

    files: dict[str, bytes] = field(default_factory=dict)
    gets: dict[str, int] = field(default_factory=dict)
    delay_s: float = 0.0  # per 64 KiB chunk: keeps a download in flight
    truncate: set[str] = field(default_factory=set)  # promise all bytes, send half
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def server() -> Iterator[tuple[str, Blobs]]:
    blobs = Blobs()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            with blobs.lock:
                blobs.gets[name] = blobs.gets.get(name, 0) + 1
            body = blobs.files.get(name)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if name in blobs.truncate:
                body = body[: len(body) // 2]
            for i in range(0, len(body), 1 << 16):
                time.sleep(blobs.delay_s)
                self.wfile.write(body[i : i + (1 << 16)])

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", blobs
    finally:
        httpd.shutdown()
        httpd.server_close()


def _store(tmp_path: Path, max_bytes: int = 10 << 20) -> ArtifactStore:
    return ArtifactStore(ArtifactSettings(cache_dir=tmp_path / "cache", max_cache_bytes=max_bytes))


def _artifact(uri: str, body: bytes | None = None, sha: str | None = None) -> model_pb2.Artifact:
    digest = sha if sha is not None else (hashlib.sha256(body).hexdigest() if body else "")
    return model_pb2.Artifact(uri=uri, sha256=digest)


def _payloads(store: ArtifactStore) -> list[Path]:
    return [p for p in store.objects.rglob("*") if p.is_file() and p.suffix != ".json"]


async def test_http_downloads_once_verified_with_progress(
    tmp_path: Path, server: tuple[str, Blobs]
) -> None:
    base, blobs = server
    body = bytes(range(256)) * 12_000  # ~3 MiB: several progress reports
    blobs.files["m.gguf"] = body
    store = _store(tmp_path)
    seen: list[tuple[int, int | None]] = []
    path = await store.fetch(
        _artifact(f"{base}/m.gguf", body), progress=lambda d, t: seen.append((d, t))
    )
    assert path.name == "m.gguf" and path.read_bytes() == body
    assert seen[0] == (0, len(body)) and seen[-1] == (len(body), len(body))
    again = await store.fetch(_artifact(f"{base}/m.gguf", body))
    assert again == path and blobs.gets["m.gguf"] == 1
    assert store.cached_bytes() == len(body)
    # A fresh store (a restarted worker) finds the entry on disk and re-verifies it.
    assert await _store(tmp_path).fetch(_artifact(f"{base}/m.gguf", body)) == path
    assert blobs.gets["m.gguf"] == 1


async def test_concurrent_fetches_share_one_download(
    tmp_path: Path, server: tuple[str, Blobs]
) -> None:
    base, blobs = server
    body = b"x" * (1 << 20)
    blobs.files["big"], blobs.delay_s = body, 0.01
    store = _store(tmp_path)
    paths = await asyncio.gather(*(store.fetch(_artifact(f"{base}/big", body)) for _ in range(5)))
    assert len(set(paths)) == 1 and blobs.gets["big"] == 1


async def test_one_waiter_giving_up_does_not_cancel_the_others(
    tmp_path: Path, server: tuple[str, Blobs]
) -> None:
    base, blobs = server
    body = b"y" * (1 << 20)
    blobs.files["big"], blobs.delay_s = body, 0.01
    store = _store(tmp_path)
    quitter = asyncio.create_task(store.fetch(_artifact(f"{base}/big", body)))
    stayer = asyncio.create_task(store.fetch(_artifact(f"{base}/big", body)))
    await asyncio.sleep(0.05)
    quitter.cancel()
    assert (await stayer).read_bytes() == body


async def test_checksum_mismatch_quarantines_and_places_nothing(
    tmp_path: Path, server: tuple[str, Blobs]
) -> None:
    base, blobs = server
    blobs.files["m"] = b"not the registered weights"
    store = _store(tmp_path)
    with pytest.raises(FailedPrecondition) as err:
        await store.fetch(_artifact(f"{base}/m", sha="0" * 64))
    assert err.value.reason == "CHECKSUM_MISMATCH"
    # The client learns the digests, not where the worker keeps the evidence.
    assert str(tmp_path) not in err.value.message and "quarantined" not in err.value.metadata
    [quarantined] = store.quarantined()
    assert _read(quarantined) == b"not the registered weights"
    assert _payloads(store) == [] and store.entries() == []
    assert list(store.tmp.iterdir()) == []


async def test_truncated_download_leaves_no_partial_file(
    tmp_path: Path, server: tuple[str, Blobs]
) -> None:
    base, blobs = server
    blobs.files["m"] = b"z" * 200_000
    blobs.truncate.add("m")
    store = _store(tmp_path)
    with pytest.raises(Unavailable):
        await store.fetch(_artifact(f"{base}/m"))
    assert _payloads(store) == [] and list(store.tmp.iterdir()) == []


async def test_missing_and_unreachable_remotes(tmp_path: Path, server: tuple[str, Blobs]) -> None:
    base, _ = server
    store = _store(tmp_path)
    with pytest.raises(NotFound):
        await store.fetch(_artifact(f"{base}/nope"))
    with pytest.raises(Unavailable):
        # Port 9 (discard) on loopback: nothing listens there on a test machine.
        await store.fetch(_artifact("http://127.0.0.1:9/m.gguf"))


async def test_lru_eviction_spares_files_in_use(tmp_path: Path, server: tuple[str, Blobs]) -> None:
    base, blobs = server
    for name in "abcd":
        blobs.files[name] = name.encode() * 400_000
    store = _store(tmp_path, max_bytes=1_000_000)  # two 400 kB files fit, not three
    a = await store.fetch(_artifact(f"{base}/a"), retain=True)  # in use: never evicted
    b = await store.fetch(_artifact(f"{base}/b"))
    c = await store.fetch(_artifact(f"{base}/c"))  # evicts b, the LRU unused entry
    assert a.exists() and c.exists() and not b.exists()
    with pytest.raises(ResourceExhausted):
        # c is in use now too: nothing can make room for d.
        store.retain(c)
        await store.fetch(_artifact(f"{base}/d"))
    store.release(a)
    d = await store.fetch(_artifact(f"{base}/d"))
    assert d.exists() and not a.exists() and c.exists()
    assert store.cached_bytes() <= 1_000_000


async def test_evicted_files_are_deleted_outside_the_lock_the_loop_takes(
    tmp_path: Path, server: tuple[str, Blobs], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, blobs = server
    for name in "ab":
        blobs.files[name] = name.encode() * 400_000
    store = _store(tmp_path, max_bytes=500_000)  # room for one
    await store.fetch(_artifact(f"{base}/a"))
    dropped: list[tuple[str, bool]] = []
    drop = store._drop

    def recording_drop(key: str) -> None:
        # fetch/release take the lock on the event loop: deleting under it would stall it.
        dropped.append((key, store.budget.lock.locked()))
        drop(key)

    monkeypatch.setattr(store, "_drop", recording_drop)
    b = await store.fetch(_artifact(f"{base}/b"))  # evicts a
    a_key = parse_uri(f"{base}/a").cache_key
    assert (a_key, False) in dropped
    assert b.exists() and [e.uri for e in store.entries()] == [f"{base}/b"]


async def test_artifact_larger_than_the_cache_is_refused(
    tmp_path: Path, server: tuple[str, Blobs]
) -> None:
    base, blobs = server
    blobs.files["huge"] = b"h" * 5000
    with pytest.raises(ResourceExhausted) as err:
        await _store(tmp_path, max_bytes=1000).fetch(_artifact(f"{base}/huge"))
    assert err.value.reason == "ARTIFACT_TOO_LARGE"


async def test_file_uris_are_verified_in_place(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF weights")
    store = _store(tmp_path)
    assert await store.fetch(_artifact(model.as_uri(), b"GGUF weights")) == model
    with pytest.raises(FailedPrecondition) as err:
        await store.fetch(_artifact(model.as_uri(), sha="1" * 64))
    assert err.value.reason == "CHECKSUM_MISMATCH" and model.exists()  # the user's file stays
    with pytest.raises(FailedPrecondition) as missing:
        await store.fetch(_artifact((tmp_path / "gone.gguf").as_uri()))
    assert missing.value.reason == "ARTIFACT_MISSING"


async def test_hf_directories_hash_as_a_tree(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "sub" / "w.bin").write_bytes(b"w")
    listing = (
        f"{hashlib.sha256(b'{}').hexdigest()}  config.json\n"
        f"{hashlib.sha256(b'w').hexdigest()}  sub/w.bin\n"
    )
    digest = hashlib.sha256(listing.encode()).hexdigest()
    assert artifact_files.sha256_tree(ckpt) == digest
    assert await _store(tmp_path).fetch(_artifact(str(ckpt), sha=digest)) == ckpt


async def test_corrupted_cache_entry_is_quarantined_and_refetched(
    tmp_path: Path, server: tuple[str, Blobs]
) -> None:
    base, blobs = server
    body = b"good weights" * 1000
    blobs.files["m"] = body
    path = await _store(tmp_path).fetch(_artifact(f"{base}/m", body))
    path.write_bytes(b"bit rot")
    again = await _store(tmp_path).fetch(_artifact(f"{base}/m", body))
    assert again.read_bytes() == body and blobs.gets["m"] == 2
    assert any(_store(tmp_path).quarantine.iterdir())


def _read(path: Path) -> bytes:
    return path.read_bytes()
