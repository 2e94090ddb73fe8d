"""What a model from the catalogue must be before this worker fetches or loads it."""

from __future__ import annotations

from modelyard.digest import is_sha256
from modelyard.errors import FailedPrecondition
from modelyard.refs import key_of
from modelyard.v1 import model_pb2


def servable(model: model_pb2.Model) -> model_pb2.Model:
    """`model`, or FAILED_PRECONDITION when it is archived or its weights cannot be verified."""
    key = key_of(model)
    if model.stage == model_pb2.STAGE_ARCHIVED:
        raise FailedPrecondition(
            f"model {key} is archived and is not served; use a servable version "
            "(see `modelyard models list`)",
            reason="MODEL_ARCHIVED",
            metadata={"model": key},
        )
    # Registered before the registry required one: the weights could not be verified.
    if not is_sha256(model.artifact.sha256):
        raise FailedPrecondition(
            f"model {key} has no valid artifact.sha256, so its weights cannot be verified; "
            "register a new version with the artifact's sha256",
            reason="ARTIFACT_UNVERIFIABLE",
            metadata={"model": key},
        )
    return model
