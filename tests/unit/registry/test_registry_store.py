"""RegistryStore on a real SQLite file: registration, lookup, listing, revisions."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, text

from modelyard.errors import AlreadyExists, InvalidArgument, NotFound
from modelyard.v1 import common_pb2, model_pb2, registry_pb2
from registry.store import ModelFilter, RegistryStore, open_store
from registry.tables import ChangeRow
from tests.unit.registry.factories import make_model


async def test_register_then_get_returns_the_stored_model(store: RegistryStore) -> None:
    result = await store.register(make_model(tags=("small",), labels={"team": "search"}))

    assert result.created
    assert result.revision == 1
    assert result.model.stage == model_pb2.STAGE_STAGING  # UNSPECIFIED is stored as staging
    assert result.model.created_at.seconds > 0
    assert result.model.updated_at == result.model.created_at
    got = await store.get("smollm2", "1")
    assert got == result.model
    assert list(got.capabilities.tags) == ["small"]
    assert dict(got.labels) == {"team": "search"}


async def test_store_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'dir' / 'registry.db'}"
    first = await open_store(url)
    registered = (await first.register(make_model())).model
    await first.close()

    second = await open_store(url)
    try:
        assert await second.get("smollm2", "1") == registered
        assert await second.revision() == 1
    finally:
        await second.close()


async def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    async with store.engine.connect() as conn:
        assert (await conn.scalar(text("PRAGMA journal_mode"))) == "wal"
        assert (await conn.scalar(text("PRAGMA foreign_keys"))) == 1
        assert (await conn.scalar(text("PRAGMA synchronous"))) == 2  # FULL
    await store.close()


async def test_identical_registration_is_idempotent(store: RegistryStore) -> None:
    first = await store.register(make_model())
    again = make_model()
    again.created_at.seconds = 12345  # registry-owned fields do not count as content

    second = await store.register(again)

    assert not second.created
    assert second.model == first.model
    assert second.revision == first.revision == await store.revision()


async def test_reregistering_after_a_promotion_is_still_idempotent(store: RegistryStore) -> None:
    await store.register(make_model(stage=model_pb2.STAGE_PRODUCTION))

    result = await store.register(make_model())  # stage unspecified: the default

    assert not result.created
    assert result.model.stage == model_pb2.STAGE_PRODUCTION


async def test_different_content_is_already_exists_naming_the_model(store: RegistryStore) -> None:
    await store.register(make_model())

    with pytest.raises(AlreadyExists) as caught:
        await store.register(make_model(uri="file:///models/other.gguf", tags=("x",)))

    assert "smollm2@1" in caught.value.message
    assert "artifact, capabilities" in caught.value.message
    assert caught.value.metadata["fields"] == "artifact,capabilities"
    assert await store.revision() == 1


async def test_asking_for_another_stage_on_an_existing_version_conflicts(
    store: RegistryStore,
) -> None:
    await store.register(make_model())

    with pytest.raises(AlreadyExists, match="SetStage"):
        await store.register(make_model(stage=model_pb2.STAGE_PRODUCTION))


async def test_invalid_model_lists_every_bad_field(store: RegistryStore) -> None:
    bad = make_model(name="Bad Name", version="", uri="")

    with pytest.raises(InvalidArgument) as caught:
        await store.register(bad)

    fields = [v.field for v in caught.value.violations]
    assert fields == ["model.name", "model.version", "model.artifact.uri"]
    assert await store.revision() == 0


async def test_missing_artifact_uri_names_the_field(store: RegistryStore) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await store.register(make_model(uri=""))

    assert caught.value.message.startswith("model.artifact.uri:")


async def test_get_without_version_prefers_newest_production(store: RegistryStore) -> None:
    await store.register(make_model(version="1", stage=model_pb2.STAGE_PRODUCTION))
    await store.register(make_model(version="2", stage=model_pb2.STAGE_PRODUCTION))
    await store.register(make_model(version="3"))  # staging, newer

    assert (await store.get("smollm2")).version == "2"


async def test_get_without_version_falls_back_to_newest_not_archived(store: RegistryStore) -> None:
    await store.register(make_model(version="1"))
    await store.register(make_model(version="2"))
    await store.register(make_model(version="3", stage=model_pb2.STAGE_ARCHIVED))

    assert (await store.get("smollm2")).version == "2"


async def test_get_with_only_archived_versions_says_so(store: RegistryStore) -> None:
    await store.register(make_model(version="1", stage=model_pb2.STAGE_ARCHIVED))

    with pytest.raises(NotFound, match="archived"):
        await store.get("smollm2")
    assert (await store.get("smollm2", "1")).stage == model_pb2.STAGE_ARCHIVED


async def test_unknown_name_lists_what_exists(store: RegistryStore) -> None:
    with pytest.raises(NotFound, match="no models yet"):
        await store.get("smollm2")

    await store.register(make_model(name="smollm2"))
    await store.register(make_model(name="gemma3"))

    with pytest.raises(NotFound, match="did you mean 'smollm2'"):
        await store.get("smollm3")
    with pytest.raises(NotFound, match="registered models: gemma3, smollm2") as caught:
        await store.get("zzz")
    assert caught.value.metadata == {"model": "zzz", "version": ""}


async def test_unknown_version_lists_the_versions(store: RegistryStore) -> None:
    await store.register(make_model(version="1"))
    await store.register(make_model(version="2"))

    with pytest.raises(NotFound, match=r"smollm2@9 not found; .* newest first: 2, 1"):
        await store.get("smollm2", "9")


async def test_get_validates_name_and_version(store: RegistryStore) -> None:
    with pytest.raises(InvalidArgument, match=r"^name:"):
        await store.get("Not Valid")
    with pytest.raises(InvalidArgument, match=r"^version:"):
        await store.get("smollm2", "bad version")


async def test_every_write_bumps_the_revision_by_one_and_records_a_change(
    store: RegistryStore,
) -> None:
    revisions = [(await store.register(make_model(version=str(i)))).revision for i in range(1, 4)]
    await store.register(make_model(version="1"))  # no-op: no new revision

    assert revisions == [1, 2, 3]
    assert await store.revision() == 3
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(ChangeRow).order_by(ChangeRow.revision))).all()
    assert [r.revision for r in rows] == [1, 2, 3]
    change = registry_pb2.CatalogChange.FromString(rows[1].payload)
    assert change.kind == registry_pb2.CHANGE_KIND_MODEL_PUT
    assert change.revision == 2
    assert (change.model.name, change.model.version) == ("smollm2", "2")
    assert change.model.created_at.seconds > 0


async def test_list_orders_by_name_then_newest_first(store: RegistryStore) -> None:
    for name, version in [("b", "1"), ("a", "1"), ("b", "2"), ("a", "2"), ("c", "1")]:
        await store.register(make_model(name=name, version=version))

    page = await store.list_models()

    assert [(m.name, m.version) for m in page.models] == [
        ("a", "2"),
        ("a", "1"),
        ("b", "2"),
        ("b", "1"),
        ("c", "1"),
    ]
    assert page.next_page_token == ""
    assert page.revision == 5


async def test_paging_walks_every_row_once_even_with_writes_between_pages(
    store: RegistryStore,
) -> None:
    for name in ("a", "b", "c"):
        for version in ("1", "2", "3"):
            await store.register(make_model(name=name, version=version))

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await store.list_models(page_size=4, page_token=token)
        seen += [f"{m.name}@{m.version}" for m in page.models]
        pages += 1
        if pages == 1:
            await store.register(make_model(name="a", version="4"))  # sorts before the cursor
        token = page.next_page_token
        if not token:
            break

    assert pages == 3
    assert seen == ["a@3", "a@2", "a@1", "b@3", "b@2", "b@1", "c@3", "c@2", "c@1"]


async def test_page_size_defaults_and_caps(store: RegistryStore) -> None:
    for version in range(3):
        await store.register(make_model(version=str(version)))

    assert len((await store.list_models(page_size=0)).models) == 3
    assert len((await store.list_models(page_size=5000)).models) == 3


async def test_bad_or_foreign_page_tokens_are_invalid_argument(store: RegistryStore) -> None:
    for version in ("1", "2"):
        await store.register(make_model(version=version))
    token = (await store.list_models(page_size=1)).next_page_token
    assert token

    with pytest.raises(InvalidArgument, match=r"^page_token: not a token"):
        await store.list_models(page_token="garbage!")
    with pytest.raises(InvalidArgument, match="other filters"):
        await store.list_models(ModelFilter(require_chat=True), page_size=1, page_token=token)


async def test_list_filters(store: RegistryStore) -> None:
    await store.register(
        make_model(
            name="chat-only",
            completion=False,
            tags=("small", "code"),
            labels={"team": "search", "tier": "free"},
        )
    )
    await store.register(
        make_model(
            name="base",
            chat=False,
            stage=model_pb2.STAGE_PRODUCTION,
            tags=("small",),
            labels={"team": "search", "tier": "paid"},
        )
    )
    await store.register(make_model(name="other", stage=model_pb2.STAGE_ARCHIVED))

    async def names(filters: ModelFilter) -> list[str]:
        return [m.name for m in (await store.list_models(filters)).models]

    assert await names(ModelFilter()) == ["base", "chat-only", "other"]
    assert await names(ModelFilter(name="base")) == ["base"]
    assert await names(ModelFilter(stage=model_pb2.STAGE_PRODUCTION)) == ["base"]
    assert await names(ModelFilter(require_chat=True)) == ["chat-only", "other"]
    assert await names(ModelFilter(require_completion=True)) == ["base", "other"]
    assert await names(ModelFilter(tags=("small",))) == ["base", "chat-only"]
    assert await names(ModelFilter(tags=("small", "code"))) == ["chat-only"]
    assert await names(ModelFilter(label_selector="team=search")) == ["base", "chat-only"]
    assert await names(ModelFilter(label_selector="team==search,tier!=free")) == ["base"]
    assert await names(ModelFilter(label_selector="tier!=free")) == ["base", "other"]
    assert await names(ModelFilter(label_selector="tier")) == ["base", "chat-only"]
    assert await names(ModelFilter(label_selector="!tier")) == ["other"]


async def test_list_rejects_bad_filters(store: RegistryStore) -> None:
    with pytest.raises(InvalidArgument, match=r"^label_selector:"):
        await store.list_models(ModelFilter(label_selector="tier in (free)"))
    with pytest.raises(InvalidArgument, match=r"^stage:"):
        await store.list_models(ModelFilter(stage=model_pb2.Stage.ValueType(42)))


# -- what workers need to trust a version ---------------------------------------------


@pytest.mark.parametrize("sha256", ["", "abc123", "ab" * 31, "zz" * 32, "../../" + "a" * 58])
async def test_a_version_without_a_64_hex_sha256_is_refused(
    store: RegistryStore, sha256: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await store.register(make_model(sha256=sha256))

    assert [v.field for v in caught.value.violations] == ["model.artifact.sha256"]
    assert await store.revision() == 0


async def test_an_uppercase_sha256_is_stored_lowercase(store: RegistryStore) -> None:
    result = await store.register(make_model(sha256="AB" * 32))

    assert result.model.artifact.sha256 == "ab" * 32


async def test_a_sha256_in_load_options_extra_is_refused(store: RegistryStore) -> None:
    # Workers once named a conversion cache directory after extra["sha256"].
    model = make_model()
    model.load_options.extra["sha256"] = "../../e"

    with pytest.raises(InvalidArgument) as caught:
        await store.register(model)

    assert [v.field for v in caught.value.violations] == ["model.load_options.extra.sha256"]


@pytest.mark.parametrize("key", ["trust_remote_code", "model", "download_dir", "tokenizer"])
async def test_vllm_options_that_choose_code_or_files_are_refused(
    store: RegistryStore, key: str
) -> None:
    model = make_model()
    model.engines.append(common_pb2.ENGINE_VLLM)
    model.load_options.extra[key] = "true"

    with pytest.raises(InvalidArgument) as caught:
        await store.register(model)

    violation = caught.value.violations[0]
    assert violation.field == f"model.load_options.extra.{key}"
    assert "gpu_memory_utilization" in violation.description  # the allowed keys are listed


@pytest.mark.parametrize(
    ("key", "value", "wanted"),
    [("flash_attn", "true", "'0' or '1'"), ("kv_unified", "yes", "'0' or '1'"),
     ("n_gpu_layers", "all", "an integer")],
)  # fmt: skip
async def test_llama_cpp_options_no_worker_could_read_are_refused(
    store: RegistryStore, key: str, value: str, wanted: str
) -> None:
    model = make_model()
    model.engines.append(common_pb2.ENGINE_LLAMA_CPP)
    model.load_options.extra[key] = value

    with pytest.raises(InvalidArgument) as caught:
        await store.register(model)

    (violation,) = caught.value.violations
    assert violation.field == f"model.load_options.extra.{key}"
    assert f"{key} is {wanted}, not {value!r}" in violation.description
    assert await store.revision() == 0


async def test_engine_options_the_engines_read_are_accepted(store: RegistryStore) -> None:
    vllm = make_model(version="1")
    vllm.engines.append(common_pb2.ENGINE_VLLM)
    vllm.load_options.extra["gpu_memory_utilization"] = "0.5"
    llama = make_model(version="2")
    llama.engines.append(common_pb2.ENGINE_LLAMA_CPP)
    llama.load_options.extra["n_gpu_layers"] = "10"

    await store.register(vllm)
    await store.register(llama)
    llama_only = make_model(version="3")
    llama_only.engines.append(common_pb2.ENGINE_LLAMA_CPP)
    llama_only.load_options.extra["gpu_memory_utilization"] = "0.5"  # vLLM's, not llama.cpp's
    with pytest.raises(InvalidArgument, match="gpu_memory_utilization"):
        await store.register(llama_only)
