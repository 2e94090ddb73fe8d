"""Routing state that outlives one request: per (worker, model) latency estimates.
(The registry's Watch-fed catalogue is the kernel's `modelyard.catalogue_cache`.)"""
