from router.scheduling.filters.capability import CapabilityFilter
from tests.unit.router.scheduling.plugin_kit import cand, cycle, model, req


def test_chat_needs_a_chat_model_and_completion_a_completion_model() -> None:
    chat_only = cand(m=model(completion=False))
    plain_only = cand(m=model(chat=False))
    f = CapabilityFilter()
    assert list(f.filter(req(chat=True), [chat_only, plain_only], cycle())) == [chat_only]
    assert list(f.filter(req(chat=False), [chat_only, plain_only], cycle())) == [plain_only]


def test_context_must_hold_prompt_plus_max_tokens() -> None:
    small, big = cand(m=model(context_length=512)), cand(m=model(context_length=4096))
    r = req(prompt_tokens=400, max_tokens=200)
    state = cycle()
    assert list(CapabilityFilter().filter(r, [small, big], state)) == [big]
    assert "600 tokens needed" in state.describe_rejections()


def test_min_context_length_and_required_tags() -> None:
    code = cand(m=model(tags=("code", "small"), context_length=8192))
    chat = cand(m=model(tags=("small",), context_length=8192))
    r = req(required_tags=("code",), min_context_length=8000)
    assert list(CapabilityFilter().filter(r, [code, chat], cycle())) == [code]
