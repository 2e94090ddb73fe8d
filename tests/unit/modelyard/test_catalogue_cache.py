from modelyard.catalogue_cache import RegistryCache
from modelyard.v1 import model_pb2, registry_pb2
from tests.unit.router.doubles import make_model


def change(revision: int, kind: int, **fields: object) -> registry_pb2.WatchResponse:
    return registry_pb2.WatchResponse(
        change=registry_pb2.CatalogChange(revision=revision, kind=kind, **fields)  # type: ignore[arg-type]
    )


def test_snapshot_then_changes_in_revision_order() -> None:
    cache = RegistryCache()
    assert not cache.synced.is_set()
    cache.apply(
        registry_pb2.WatchResponse(
            snapshot=registry_pb2.CatalogSnapshot(revision=5, models=[make_model("a", "1")])
        )
    )
    assert cache.synced.is_set() and cache.revision == 5
    cache.apply(change(6, registry_pb2.CHANGE_KIND_MODEL_PUT, model=make_model("b", "1")))
    cache.apply(change(7, registry_pb2.CHANGE_KIND_ROUTE_PUT, route=model_pb2.Route(name="r")))
    cache.apply(change(8, registry_pb2.CHANGE_KIND_MODEL_DELETED, model=make_model("a", "1")))
    # A repeated (already applied) change is ignored.
    cache.apply(change(6, registry_pb2.CHANGE_KIND_MODEL_PUT, model=make_model("a", "1")))
    assert cache.revision == 8
    assert [m.name for m in cache.models()] == ["b"]
    assert cache.route("r") is not None
    cache.apply(change(9, registry_pb2.CHANGE_KIND_ROUTE_DELETED, route=model_pb2.Route(name="r")))
    assert cache.route("r") is None


def test_a_name_resolves_to_its_newest_production_version() -> None:
    cache = RegistryCache()
    old = make_model("a", "1")
    old.created_at.seconds = 1
    new = make_model("a", "2")
    new.created_at.seconds = 2
    staging = make_model("a", "3", stage=model_pb2.STAGE_STAGING)
    staging.created_at.seconds = 3
    cache.apply(
        registry_pb2.WatchResponse(
            snapshot=registry_pb2.CatalogSnapshot(revision=1, models=[old, new, staging])
        )
    )
    found = cache.model("a")
    assert found is not None and found.version == "2"
    exact = cache.model("a", "3")
    assert exact is not None and exact.version == "3"
    assert cache.model("zzz") is None
