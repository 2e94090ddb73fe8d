"""Which models this worker holds in memory, and the work of getting them there.

manager.py        ModelManager: the state machine (cold -> loading -> warm -> draining),
                  leases with reference counts, budget and evictions, drain
state.py          Resident (one row per model version), the states, Lease, results
eviction.py       plan_eviction: a pure function, LRU among idle models
engine_choice.py  pick_engine: which installed engine loads a model
loader.py         ModelLoader: fetch (given the artifact store), size, open, warm up
keep_alive.py     idle timers
memory.py         estimates, the budget's default, the process's RSS
progress.py       load phases and download bytes for status watchers
load_options.py   a model's load options as the engine's `extra` strings
preload.py        the preload file
stats.py          load and refusal counters for /metrics
"""

from worker.residency.loader import ModelLoader
from worker.residency.manager import ModelManager
from worker.residency.state import (
    HOLDS_MEMORY,
    Lease,
    LoadResult,
    PreloadEntry,
    ResidencyState,
    Resident,
    UnloadResult,
)

__all__ = [
    "HOLDS_MEMORY",
    "Lease",
    "LoadResult",
    "ModelLoader",
    "ModelManager",
    "PreloadEntry",
    "ResidencyState",
    "Resident",
    "UnloadResult",
]
