"""One download into a work directory: its size agreed and reserved before the first
byte, then the bytes, through the source its scheme names. Blocking (the store runs it
on its download executor)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from modelyard.errors import FailedPrecondition
from modelyard.v1 import model_pb2
from worker.artifacts.files import sha256_path, tree_size
from worker.artifacts.guard import DownloadGuard, too_large
from worker.artifacts.hub import download_hf, hub_size
from worker.artifacts.settings import ArtifactSettings
from worker.artifacts.sources import stream_to_file
from worker.artifacts.uri import ArtifactUri

MakeRoom = Callable[[int], None]


class Transfer:
    def __init__(
        self,
        src: ArtifactUri,
        artifact: model_pb2.Artifact,
        guard: DownloadGuard,
        settings: ArtifactSettings,
        work: Path,
    ) -> None:
        self.src, self.guard, self.work = src, guard, work
        self.declared = artifact.size_bytes or None  # the registry's figure, if it has one
        # The most one fetch may download: never more than the whole cache.
        self.cap = min(settings.max_artifact_bytes, settings.max_cache_bytes)
        self.settings = settings
        self.size = 0  # bytes downloaded, once `run` returns

    def run(self, make_room: MakeRoom) -> tuple[Path, str]:
        """(payload, sha256). `make_room(n)` reserves n bytes in the cache or raises."""
        if self.declared is not None and self.declared > self.cap:
            raise too_large(self.guard.name, self.cap, self.declared)  # before any request

        def reserve(remote: int | None) -> None:
            size = self._agree(remote)
            if size is not None and size > self.cap:
                raise too_large(self.guard.name, self.cap, size)
            # Unknown size: reserve the most it may grow to (never 0), cut it there.
            make_room(size if size is not None else self.cap)
            self.guard.expect(size, size if size is not None else self.cap)

        if self.src.scheme == "hf":
            reserve(hub_size(self.src, self.settings))
            payload = download_hf(self.src, self.work, self.guard, self.settings)
            self.size = tree_size(payload)
            if self.size > self.guard.limit:  # a source that wrote past its bar's count
                raise too_large(self.guard.name, self.guard.limit, self.size)
            self.guard.finish(size=self.size)
            return payload, sha256_path(payload)
        payload = self.work / self.src.filename
        digest = stream_to_file(self.src, payload, reserve, self.guard, self.settings)
        self.size = self.guard.done
        return payload, digest

    def _agree(self, remote: int | None) -> int | None:
        if self.declared is not None and remote is not None and remote != self.declared:
            raise FailedPrecondition(
                f"artifact {self.guard.name}: the remote has {remote} bytes, but the model "
                f"is registered with artifact.size_bytes {self.declared}: not downloaded "
                "(the file changed, or the registration is wrong)",
                reason="ARTIFACT_SIZE_MISMATCH",
                metadata={"declared_bytes": str(self.declared), "remote_bytes": str(remote)},
            )
        return self.declared if self.declared is not None else remote
