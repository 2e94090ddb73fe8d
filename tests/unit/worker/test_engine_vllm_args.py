"""vLLM engine mappings: load options -> AsyncEngineArgs, sampling -> SamplingParams, finish."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from modelyard.errors import InvalidArgument
from worker.engines.base import EngineRequest, FinishReason, ModelSpec, SamplingConfig

pytest.importorskip("vllm")

from worker.engines.sampling_map import vllm_sampling_params
from worker.engines.vllm import _Active, _finish_reason, engine_args


def _ckpt(tmp_path: Path, trained: int = 8192) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": trained}))
    return tmp_path


def test_engine_args_map_context_parallelism_quantization_and_draft(tmp_path: Path) -> None:
    spec = ModelSpec(
        key="m@1",
        path=tmp_path,
        context_length=16384,
        threads=1,
        max_parallel_sequences=8,
        extra={
            "quantization": "fp8",
            "draft_model": "/models/draft",
            "num_speculative_tokens": "3",
            "gpu_memory_utilization": "0.5",
        },
    )
    args = engine_args(spec, _ckpt(tmp_path, trained=8192))
    assert args.max_model_len == 8192  # capped at what the model was trained for
    assert args.max_num_seqs == 8 and args.quantization == "fp8"
    assert args.speculative_config == {"model": "/models/draft", "num_speculative_tokens": 3}
    assert args.gpu_memory_utilization == 0.5
    assert args.enable_prefix_caching is False  # opt-in: the worker's default share is 0
    on = engine_args(dataclasses.replace(spec, prefix_cache_share=0.5), _ckpt(tmp_path))
    assert on.enable_prefix_caching is True


def test_unknown_extra_options_are_refused(tmp_path: Path) -> None:
    spec = ModelSpec("m@1", tmp_path, 2048, 1, extra={"no_such_option": "1"})
    with pytest.raises(InvalidArgument):
        engine_args(spec, _ckpt(tmp_path))


def test_sampling_maps_every_field_and_streams_deltas() -> None:
    from vllm.sampling_params import RequestOutputKind

    s = SamplingConfig(0.7, 0.9, 40, 0.05, 0.1, 0.2, 1.1, seed=3)
    p = vllm_sampling_params(EngineRequest("r", prompt="x", sampling=s, stop=["\n\n"]), 17)
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (0.7, 0.9, 40, 0.05)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.1, 0.2, 1.1)
    assert (p.seed, p.stop, p.max_tokens) == (3, ["\n\n"], 17)
    assert p.output_kind == RequestOutputKind.DELTA and not p.include_stop_str_in_output


@pytest.mark.parametrize(
    ("finish", "stop", "capped", "expected"),
    [
        ("stop", None, False, (FinishReason.STOP, "")),
        ("stop", 2, False, (FinishReason.STOP, "")),
        ("stop", "###", False, (FinishReason.STOP_SEQUENCE, "###")),
        ("length", None, False, (FinishReason.LENGTH, "")),
        ("length", None, True, (FinishReason.CONTEXT_LENGTH, "")),
        ("abort", None, False, (FinishReason.CANCELLED, "")),
    ],
)
def test_finish_reasons(
    finish: str, stop: object, capped: bool, expected: tuple[FinishReason, str]
) -> None:
    completion = SimpleNamespace(finish_reason=finish, stop_reason=stop)
    assert _finish_reason(completion, _Active("r"), capped) == expected
