"""hf:// artifacts through huggingface_hub, blocking (run on the store's download executor).

The size comes first, from the Hub's file metadata (a HEAD of the file, or the API's
list of a repository's files), so the store reserves it before a byte is downloaded.
The download then passes every block through the `DownloadGuard` (huggingface_hub
reports each block to its progress bar before writing it: our bar is the guard), so the
byte limit and the deadline hold here as for http(s)://. Messages never carry
huggingface_hub's text (its URLs name the endpoint): the log has it.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

from modelyard.errors import FailedPrecondition, ModelyardError, NotFound, Unavailable
from worker.artifacts.guard import DownloadGuard
from worker.artifacts.settings import ArtifactSettings
from worker.artifacts.uri import ArtifactUri, shown

log = logging.getLogger(__name__)

# The progress bars that count a file's bytes as they arrive: one file's own bar, and the
# bar a whole-repository download adds every file's blocks to.
_BYTE_BARS = {"huggingface_hub.http_get", "huggingface_hub.snapshot_download"}


def hub_size(src: ArtifactUri, settings: ArtifactSettings) -> int | None:
    """Bytes of the file (a HEAD of it), or of every file of the repository (the API's file
    list); None when the Hub does not say."""
    hf = _hub(src)
    try:
        if src.path:
            url = hf.hf_hub_url(src.location, src.path, revision=src.revision)
            meta = hf.get_hf_file_metadata(url, timeout=settings.timeout_s)
            size: int | None = meta.size
            return size
        info = hf.HfApi().model_info(src.location, revision=src.revision, files_metadata=True)
    except ModelyardError:
        raise
    except Exception as err:
        raise _hf_error(src, err) from err
    sizes = [f.size for f in info.siblings or []]
    return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)


def download_hf(
    src: ArtifactUri, dest_dir: Path, guard: DownloadGuard, settings: ArtifactSettings
) -> Path:
    """Into `dest_dir`: the file, or the repository's directory."""
    hf = _hub(src)
    download = hf.hf_hub_download if src.path else hf.snapshot_download
    # An older huggingface_hub without a bar for single files: the size is still checked
    # after the download (transfer.py) and the deadline at its end.
    bars = {"tqdm_class": _guarded_bar(guard)} if _takes_bar(download) else {}
    try:
        if src.path:
            got = download(
                src.location,
                src.path,
                revision=src.revision,
                local_dir=dest_dir,
                etag_timeout=settings.timeout_s,
                **bars,
            )
        else:
            got = download(
                src.location,
                revision=src.revision,
                local_dir=dest_dir / src.filename,
                etag_timeout=settings.timeout_s,
                **bars,
            )
    except ModelyardError:
        raise
    except Exception as err:
        raise _hf_error(src, err) from err
    guard.check_time()
    return Path(got)


def _hub(src: ArtifactUri) -> ModuleType:
    try:
        import huggingface_hub
    except ImportError as err:
        raise FailedPrecondition(
            f"artifact {shown(src.uri)} needs huggingface_hub: pip install 'modelyard[hf]'",
            reason="ARTIFACT_SCHEME_UNSUPPORTED",
        ) from err
    return huggingface_hub


def _takes_bar(download: Any) -> bool:
    try:
        return "tqdm_class" in inspect.signature(download).parameters
    except (TypeError, ValueError):
        return False


def _guarded_bar(guard: DownloadGuard) -> type[Any]:
    # huggingface_hub's own bar class (it honours the log level and disable flags); the
    # package re-exports a function of the same name, so take the class from its module.
    hf_tqdm: Any = importlib.import_module("huggingface_hub.utils.tqdm").tqdm

    class GuardedBar(hf_tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._counts = kwargs.get("name") in _BYTE_BARS
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if self._counts and n:
                guard.take(int(n))  # raises past the limit or the deadline: nothing written
            result: bool | None = super().update(n)
            return result

    return GuardedBar


def _hf_error(src: ArtifactUri, err: Exception) -> ModelyardError:
    # Matched by name: huggingface_hub has moved these classes between modules.
    log.warning("artifact %s: huggingface_hub: %r", src.uri, err)
    name = shown(src.uri)
    names = {cls.__name__ for cls in type(err).__mro__}
    if names & {"RepositoryNotFoundError", "EntryNotFoundError", "RevisionNotFoundError"}:
        return NotFound(f"artifact {name}: the Hub has no such repository, revision or file")
    if names & {"GatedRepoError"}:
        return FailedPrecondition(
            f"artifact {name}: the repository is gated; give the worker a token with access "
            "(HF_TOKEN)"
        )
    if names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "Timeout"}:
        return Unavailable(f"artifact {name}: cannot reach the Hugging Face Hub")
    if names & {"HfHubHTTPError"}:
        return FailedPrecondition(f"artifact {name}: the Hugging Face Hub refused the download")
    return Unavailable(f"artifact {name}: the download from the Hugging Face Hub failed")
