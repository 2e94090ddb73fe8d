"""Outcomes to the registry: each finished request's outcome is buffered and shipped in
batches (never on the request's path), and mesh-wide stats and feedback are read and
written through the registry's OutcomeService."""

from router.outcomes.mesh import MeshOutcomes
from router.outcomes.shipper import OutcomeShipper

__all__ = ["MeshOutcomes", "OutcomeShipper"]
