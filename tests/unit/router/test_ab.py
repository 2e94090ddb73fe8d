import random
from collections import Counter

import pytest

from modelyard.v1 import model_pb2
from router.ab import choose_arm


def route(sticky: bool = True) -> model_pb2.Route:
    return model_pb2.Route(
        name="chat",
        arms=[
            model_pb2.RouteArm(name="control", model="a", weight=70),
            model_pb2.RouteArm(name="candidate", model="b", weight=20),
            model_pb2.RouteArm(name="wild", model="c", weight=10),
        ],
        sticky_sessions=sticky,
    )


def test_ten_thousand_keys_split_within_two_points_of_the_weights() -> None:
    r = route()
    counts = Counter(choose_arm(r, f"user-{i}").name for i in range(10_000))
    for arm, share in (("control", 0.7), ("candidate", 0.2), ("wild", 0.1)):
        assert abs(counts[arm] / 10_000 - share) < 0.02, counts


def test_a_key_always_gets_the_same_arm() -> None:
    r = route()
    for i in range(200):
        key = f"session-{i}"
        assert len({choose_arm(r, key, random.Random(n)).name for n in range(5)}) == 1


def test_without_a_key_or_stickiness_the_draw_is_weighted_random() -> None:
    rng = random.Random(3)
    for r, key in ((route(), ""), (route(sticky=False), "user-1")):
        counts = Counter(choose_arm(r, key, rng).name for _ in range(10_000))
        assert abs(counts["control"] / 10_000 - 0.7) < 0.02


def test_zero_weight_arm_never_chosen_and_no_arms_is_an_error() -> None:
    r = model_pb2.Route(
        name="x",
        arms=[model_pb2.RouteArm(name="on", weight=1), model_pb2.RouteArm(name="off", weight=0)],
        sticky_sessions=True,
    )
    assert {choose_arm(r, f"k{i}").name for i in range(500)} == {"on"}
    with pytest.raises(ValueError):
        choose_arm(model_pb2.Route(name="empty"), "k")
