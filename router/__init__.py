"""The Router service: resolves a request's model, picks a worker and relays the stream.

Modules, one job each: `config` (the one settings object), `auth` (who may call),
`catalog` (model names → registry entries, cached), `workers` (the worker pool and its
pushed status), `scheduling` (filters, scorers, pickers), `relay` (one generation
forwarded to a worker, with retries before the first token), `accounting` (breakers,
estimates, stats and metrics after each attempt), `api` (the operations both fronts
call), `service` (gRPC translation), `openai` (the HTTP front, in process), `assembly`
(wiring) and `main` (process lifecycle). The router never imports `registry` or `worker`.
"""
