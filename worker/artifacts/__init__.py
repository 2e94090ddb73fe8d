"""A model's weights: artifact URIs, their sources, and the verifying, size-bounded cache.

`ArtifactStore` (store.py) is the one entry point; worker.main builds it from the
worker's settings and hands it to the model loader. Imports go one way:
store -> sources -> uri, settings; files has no worker imports.
"""

from worker.artifacts.files import check_gguf_magic
from worker.artifacts.settings import ArtifactSettings
from worker.artifacts.store import ArtifactStore, CacheEntry
from worker.artifacts.uri import ArtifactUri, parse_uri

__all__ = [
    "ArtifactSettings",
    "ArtifactStore",
    "ArtifactUri",
    "CacheEntry",
    "check_gguf_magic",
    "parse_uri",
]
