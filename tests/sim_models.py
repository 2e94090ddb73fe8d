"""The registry record of a simulated model, for every test and bench that runs the sim
engine: a small local file as its artifact (file:// URI and real sha256), the sim engine,
and its latency model in `extra` (worker/engines/sim_options.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from modelyard.v1 import common_pb2, model_pb2


def sim_model(
    artifact: Path,
    name: str,
    *,
    extra: Mapping[str, str],
    context_length: int,
    version: str = "1",
    stage: model_pb2.Stage.ValueType = model_pb2.STAGE_PRODUCTION,
    declare_size: bool = False,
) -> model_pb2.Model:
    """`declare_size`: publish the artifact's size (workers reserve it before fetching)."""
    return model_pb2.Model(
        name=name,
        version=version,
        artifact=model_pb2.Artifact(
            uri=artifact.resolve().as_uri(),
            sha256=hashlib.sha256(artifact.read_bytes()).hexdigest(),
            size_bytes=artifact.stat().st_size if declare_size else 0,
        ),
        engines=[common_pb2.ENGINE_SIM],
        capabilities=model_pb2.Capabilities(
            chat=True, completion=True, context_length=context_length
        ),
        load_options=model_pb2.LoadOptions(extra=dict(extra)),
        stage=stage,
    )
