"""The bounds of one download: bytes past its limit and time past its deadline end it.

Every source passes each block through `DownloadGuard.take` before writing it, so a body
longer than allowed is cut before a byte past the limit reaches the disk, and a server
that trickles bytes is cut at the first block after the deadline (a silent one by the
per-read socket timeout). Errors say what to change, never the URI's query or a path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from modelyard.errors import FailedPrecondition, ResourceExhausted, Unavailable

Progress = Callable[[int, int | None], None]

PROGRESS_STEP = 1 << 20  # report at most once per MiB


class DownloadGuard:
    """Byte limit, deadline and progress of one download; `take` runs in its thread."""

    def __init__(
        self, name: str, *, max_bytes: int, max_s: float, report: Progress | None = None
    ) -> None:
        self.name = name  # as clients may see it (uri.shown)
        self.max_bytes = max_bytes  # the configured maximum, until `expect` narrows it
        self.max_s = max_s
        self.declared: int | None = None  # the size the registry or the remote stated
        self.limit = max_bytes
        self.done = 0
        self._deadline = time.monotonic() + max_s
        self._report = report
        self._announced = -PROGRESS_STEP
        self._cancelled = threading.Event()

    def start(self) -> None:
        """The clock starts now (not while the download waited for a thread)."""
        self._deadline = time.monotonic() + self.max_s

    def expect(self, declared: int | None, limit: int) -> None:
        """The size the download announced (None: unknown) and the bytes reserved for it."""
        self.declared, self.limit = declared, limit
        self._progress(force=True)

    def take(self, n: int) -> None:
        """Account for `n` more bytes about to be written (negative: bytes rolled back)."""
        self.check_time()
        if self.done + n > self.limit:
            raise self._too_long()
        self.done += n
        self._progress()

    def check_time(self) -> None:
        if self._cancelled.is_set():
            raise Unavailable(f"artifact {self.name}: the download was abandoned")
        if time.monotonic() > self._deadline:
            raise Unavailable(
                f"artifact {self.name}: the download did not finish within {self.max_s:g} s "
                "(MODELYARD_ARTIFACTS_MAX_DOWNLOAD_S): the remote is too slow; retry later "
                "or raise the limit",
                reason="ARTIFACT_DOWNLOAD_TOO_SLOW",
                metadata={"max_download_s": f"{self.max_s:g}"},
                retry_after_s=60.0,
            )

    def cancel(self) -> None:
        """From any thread: the download's next block ends it."""
        self._cancelled.set()

    def finish(self, *, size: int | None = None) -> None:
        """The download ended: its final progress; UNAVAILABLE when it ended short of the
        declared size. `size`: the bytes on disk, where the source counted them itself."""
        if size is not None:
            self.done = size
        elif self.declared is not None and self.done != self.declared:
            raise Unavailable(
                f"artifact {self.name}: the download ended after {self.done} of "
                f"{self.declared} bytes",
                reason="ARTIFACT_DOWNLOAD_SHORT",
            )
        self._progress(force=True, total=self.done)

    def _too_long(self) -> Exception:
        if self.declared is not None:
            return FailedPrecondition(
                f"artifact {self.name}: the remote sent more than the {self.declared} bytes "
                "declared for it; the download was cut (a wrong artifact.size_bytes, or a "
                "changed file)",
                reason="ARTIFACT_SIZE_MISMATCH",
                metadata={"declared_bytes": str(self.declared)},
            )
        return too_large(self.name, self.limit)

    def _progress(self, *, force: bool = False, total: int | None = None) -> None:
        if self._report is None:
            return
        if force or self.done - self._announced >= PROGRESS_STEP:
            self._announced = self.done
            self._report(self.done, total if total is not None else self.declared)


def too_large(name: str, limit: int, size: int | None = None) -> ResourceExhausted:
    """A fetch over the most one may download: `size` when declared, None when cut there."""
    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return ResourceExhausted(
        f"artifact {name} is {what}; a fetch here downloads at most {limit} bytes "
        "(MODELYARD_ARTIFACTS_MAX_ARTIFACT_BYTES, within MODELYARD_ARTIFACTS_MAX_CACHE_BYTES; "
        "an artifact of unknown size is cut there: register its artifact.size_bytes)",
        reason="ARTIFACT_TOO_LARGE",
        metadata={"limit_bytes": str(limit)} | ({"needed_bytes": str(size)} if size else {}),
    )
