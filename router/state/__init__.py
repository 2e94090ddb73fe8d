"""Routing state that outlives one request: the registry's catalogue (fed by Watch)
and per (worker, model) latency estimates."""
