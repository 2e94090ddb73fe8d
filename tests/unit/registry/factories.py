"""Model and route messages for the registry tests."""

from __future__ import annotations

from modelyard.v1 import model_pb2


def make_model(
    name: str = "smollm2",
    version: str = "1",
    *,
    stage: model_pb2.Stage.ValueType = model_pb2.STAGE_UNSPECIFIED,
    chat: bool = True,
    completion: bool = True,
    tags: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
    uri: str = "file:///models/smollm2.gguf",
    sha256: str = "ab" * 32,
) -> model_pb2.Model:
    return model_pb2.Model(
        name=name,
        version=version,
        stage=stage,
        artifact=model_pb2.Artifact(uri=uri, sha256=sha256, format=model_pb2.ARTIFACT_FORMAT_GGUF),
        capabilities=model_pb2.Capabilities(
            chat=chat, completion=completion, context_length=2048, tags=tags
        ),
        labels=labels or {},
    )


def make_route(
    name: str = "chat",
    arms: tuple[tuple[str, float], ...] = (("smollm2@1", 1.0),),
    fallbacks: tuple[str, ...] = (),
) -> model_pb2.Route:
    return model_pb2.Route(
        name=name,
        arms=[model_pb2.RouteArm(model=model, weight=weight) for model, weight in arms],
        fallbacks=fallbacks,
    )
