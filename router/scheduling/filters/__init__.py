"""Filters: each drops candidates that cannot serve the request."""
