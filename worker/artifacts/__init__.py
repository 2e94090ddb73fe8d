"""A model's weights: artifact URIs, their sources, and the verifying, size-bounded cache.

`ArtifactStore` (store.py) is the one entry point; worker.main builds it from the
worker's settings and hands it to the model loader. Imports go one way:
store -> transfer -> sources, hub -> guard -> (nothing of ours); budget and quarantine
are the store's bookkeeping; everything may use uri, settings and files.
"""

from worker.artifacts.files import check_gguf_magic
from worker.artifacts.records import CacheEntry
from worker.artifacts.settings import ArtifactSettings
from worker.artifacts.store import ArtifactStore
from worker.artifacts.uri import ArtifactUri, parse_uri

__all__ = [
    "ArtifactSettings",
    "ArtifactStore",
    "ArtifactUri",
    "CacheEntry",
    "check_gguf_magic",
    "parse_uri",
]
