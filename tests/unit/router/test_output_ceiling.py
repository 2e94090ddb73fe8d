"""Requests without max_tokens: what the router requires of a model's context, the
ceiling it resolves, and the response cache's key."""

from __future__ import annotations

from modelyard.auth import Caller
from modelyard.v1 import common_pb2, model_pb2, router_pb2
from router.cache.key import cache_key
from router.client_policy import ClientPolicy
from router.relay.requests import Assignment, worker_request
from router.scheduling.types import Request

MODEL = model_pb2.Model(name="m", version="1")


def test_an_unset_max_tokens_needs_room_for_the_prompt_and_one_token() -> None:
    unset = Request(request_id="r", chat=True, prompt_tokens=100, max_tokens=0)
    assert unset.context_needed == 101  # runs to the end of whatever context there is
    assert Request("r", True, prompt_tokens=100, max_tokens=50).context_needed == 150
    embed = Request("r", False, prompt_tokens=100, max_tokens=0, embedding=True)
    assert embed.context_needed == 100


def test_a_key_ceiling_replaces_the_router_wide_one() -> None:
    policy = ClientPolicy(output_ceiling=500, key_output_ceilings={"batch": 40, "ops": 0})
    assert policy.output_ceiling(None) == 500
    assert policy.output_ceiling(Caller("client", key_name="alice")) == 500
    assert policy.output_ceiling(Caller("client", key_name="batch")) == 40
    assert policy.output_ceiling(Caller("client", key_name="ops")) == 0  # none for this key
    assert ClientPolicy().output_ceiling(None) == 0


def test_the_worker_request_carries_the_resolved_ceiling() -> None:
    request = router_pb2.GenerateRequest(model="m", prompt="hi")
    sent = worker_request(request, Assignment("id", 1, MODEL, output_ceiling=40))
    assert sent.max_output_tokens_ceiling == 40 and sent.sampling.max_tokens == 0


def test_the_ceiling_keys_the_cache_only_when_max_tokens_is_unset() -> None:
    def req(max_tokens: int) -> router_pb2.GenerateRequest:
        sampling = common_pb2.SamplingParams(temperature=0, max_tokens=max_tokens)
        return router_pb2.GenerateRequest(model="m", prompt="hi", sampling=sampling)

    assert cache_key(req(0), MODEL, output_ceiling=40) != cache_key(req(0), MODEL)
    assert cache_key(req(0), MODEL, output_ceiling=40) != cache_key(req(40), MODEL)
    assert cache_key(req(0), MODEL) != cache_key(req(256), MODEL)  # no more 256 default
    assert cache_key(req(8), MODEL, output_ceiling=40) == cache_key(req(8), MODEL)
