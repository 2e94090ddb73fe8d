"""The Registry service: the catalogue of model versions and routes.

`store` is plain typed Python over SQLAlchemy; `service` translates gRPC to it;
`main` runs the server.
"""
