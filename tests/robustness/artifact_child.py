"""A worker-like process with its own ArtifactStore, driven line by line over stdin/stdout
by the shared-cache tests (test_artifact_shared_cache.py).

    python tests/robustness/artifact_child.py CACHE_DIR MAX_CACHE_BYTES

prints `ready`, then answers each command with one line:
    fetch URI SHA256 RETAIN(0|1)   ->  ok PATH | err ERROR_CLASS REASON
    release PATH                   ->  ok
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from modelyard.errors import ModelyardError
from modelyard.v1 import model_pb2
from worker.artifacts import ArtifactSettings, ArtifactStore


async def main(cache_dir: str, max_bytes: int) -> None:
    store = ArtifactStore(ArtifactSettings(cache_dir=Path(cache_dir), max_cache_bytes=max_bytes))
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd, *args = line.split()
        if cmd == "fetch":
            uri, sha, retain = args
            artifact = model_pb2.Artifact(uri=uri, sha256=sha)
            try:
                path = await store.fetch(artifact, retain=retain == "1")
                print(f"ok {path}", flush=True)
            except ModelyardError as err:
                print(f"err {type(err).__name__} {err.reason}", flush=True)
        elif cmd == "release":
            store.release(Path(args[0]))
            print("ok", flush=True)
    store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
