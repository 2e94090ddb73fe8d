"""What a generation costs: the one formula, from the model's registered prices."""

from __future__ import annotations

from modelyard.v1 import common_pb2, model_pb2


def cost_of(pricing: model_pb2.Pricing, usage: common_pb2.Usage) -> common_pb2.Cost:
    """The cost of `usage` at `pricing` (USD per 1,000 input and output tokens)."""
    input_usd = usage.input_tokens * pricing.input_usd_per_1k_tokens / 1000
    output_usd = usage.output_tokens * pricing.output_usd_per_1k_tokens / 1000
    return common_pb2.Cost(
        input_usd=input_usd, output_usd=output_usd, total_usd=input_usd + output_usd
    )


def price_per_1k(pricing: model_pb2.Pricing) -> float:
    """Input and output price averaged, as RoutingHints.max_cost_per_1k_tokens defines it."""
    return (pricing.input_usd_per_1k_tokens + pricing.output_usd_per_1k_tokens) / 2
