"""The Router service: resolves a request's model, picks a worker and relays the stream.

Modules, one job each: `config` (settings), `catalog` (model names → registry
entries, cached), `workers` (the worker pool and its pushed status, plus the
skeleton candidate order), `relay` (one generation forwarded to a worker with
retries before the first token), `service` (gRPC translation) and `main`
(process lifecycle). The router never imports `registry` or `worker`.
"""
