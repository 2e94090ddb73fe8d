"""Prefix-aware routing against round-robin, load-only and session affinity on real
llama.cpp workers: TTFT p50/p95, throughput, cached-token fraction and load imbalance.

    .venv/bin/python -m bench.prefix_bench [--workers 2] [--sessions 16] [--turns 6]
        [--questions 48] [--concurrency 8] [--reps 3] [--scale 1.0] [--max-tokens 16]
        [--reply-tokens 214] [--user-sentences 6] [--think-ms 0] [--cache-share 1.0]
        [--quick]

One mesh (bench/prefix_pool.py: registry, SmolLM2 llama.cpp workers with one thread
each, one router per policy over the same workers) runs both workloads
(bench/prefix_workload.py) through every router, interleaved: each repetition runs
each workload once per policy, in a rotated order. Figures are min / median / max over
repetitions. Writes bench/results/prefix.md. `--quick` is a smoke run (2 sessions x 2
turns, 4 questions, one repetition).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from bench.prefix_pool import (
    CACHE_SHARE,
    CONTEXT_CELLS,
    PARALLEL_SEQUENCES,
    POLICIES,
    prefix_pool,
)
from bench.prefix_workload import (
    REPLY_TOKENS,
    USER_SENTENCES,
    Run,
    Sizes,
    multi_turn,
    shared_prompt,
    spread,
)
from bench.report import machine, publish

RESULTS = Path(__file__).parent / "results" / "prefix.md"
WORKLOADS = ("multi_turn", "shared_prompt")
Results = dict[str, dict[str, list[Run]]]  # workload -> policy -> one Run per repetition


def run_all(routers: Mapping[str, str], args: argparse.Namespace) -> Results:
    policies = list(routers)
    results: Results = {w: {p: [] for p in policies} for w in WORKLOADS}
    sizes = Sizes(
        args.scale, args.max_tokens, args.think_ms, args.reply_tokens, args.user_sentences
    )
    for rep in range(args.reps):
        order = policies[rep % len(policies) :] + policies[: rep % len(policies)]
        for policy in order:
            tag = f"r{rep}{policy[:2]}"
            address = routers[policy]
            # Only the affinity policy gets session keys: the others route by what they see.
            keyed = policy == "affinity"
            mt = asyncio.run(
                multi_turn(address, tag + "m", args.sessions, args.turns, sizes, keyed)
            )
            results["multi_turn"][policy].append(mt)
            sp = asyncio.run(
                shared_prompt(address, tag + "s", args.questions, args.concurrency, sizes)
            )
            results["shared_prompt"][policy].append(sp)
            print(
                f"rep {rep} {policy}: multi-turn p50 {mt.ttft(0.5):.0f} ms, "
                f"shared p50 {sp.ttft(0.5):.0f} ms",
                flush=True,
            )
    return results


def rows(runs: Mapping[str, list[Run]], workers: int) -> list[str]:
    out = [
        "| policy | TTFT p50 ms | TTFT p95 ms | req/s | output tok/s | cached fraction "
        "| turns moved | max share / fair | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for policy, reps in runs.items():
        errors = sum(sum(r.errors.values()) for r in reps)
        out.append(
            f"| {policy} | {spread([r.ttft(0.5) for r in reps])} | "
            f"{spread([r.ttft(0.95) for r in reps])} | "
            f"{spread([r.requests_per_s for r in reps], '{:.2f}')} | "
            f"{spread([r.output_tokens_per_s for r in reps], '{:.1f}')} | "
            f"{spread([r.cached_fraction for r in reps], '{:.2f}')} | "
            f"{spread([r.moved for r in reps], '{:.2f}')} | "
            f"{spread([r.max_share(workers) for r in reps], '{:.2f}')} | {errors} |"
        )
    return out


def ratios(runs: Mapping[str, list[Run]]) -> list[str]:
    """prefix / load_only per repetition (a throughput ratio > 1 is better)."""
    pairs = list(zip(runs["prefix"], runs["load_only"], strict=True))

    def each(f: Callable[[Run], float]) -> str:
        return spread([f(p) / f(b) if f(b) else 0.0 for p, b in pairs], "{:.2f}")

    return [
        "",
        f"prefix / load_only: TTFT p50 {each(lambda r: r.ttft(0.5))}, "
        f"p95 {each(lambda r: r.ttft(0.95))}, throughput {each(lambda r: r.requests_per_s)} "
        "(min / median / max over repetitions).",
    ]


def command(args: argparse.Namespace) -> str:
    if args.quick:
        return "python -m bench.prefix_bench --quick"
    flags = ("workers", "sessions", "turns", "questions", "concurrency", "reps", "scale")
    dashed = ("max_tokens", "reply_tokens", "user_sentences", "think_ms", "cache_share")
    text = " ".join(f"--{f} {getattr(args, f):g}" for f in (*flags, *dashed))
    for name in dashed:
        text = text.replace(name, name.replace("_", "-"))
    return f"python -m bench.prefix_bench {text} --policies {args.policies}"


def report(results: Results, args: argparse.Namespace) -> str:
    lines = [
        "# Prefix-aware routing bench",
        "",
        f"Machine: {machine()}; clients, routers, workers and registry share the CPUs. "
        f"{args.workers} llama.cpp workers (SmolLM2-135M Q4_1, 1 thread, {PARALLEL_SEQUENCES} "
        f"parallel sequences, {CONTEXT_CELLS} KV cells in a stream per sequence, "
        f"a prefix cache of {args.cache_share * CONTEXT_CELLS:.0f} tokens in host memory), "
        f"chat turns of ~{args.user_sentences * args.scale * 22:.0f}-token questions and "
        f"{args.reply_tokens}-token replies at most, {args.max_tokens} output tokens a "
        "shared-prompt answer, "
        f"{args.reps} interleaved repetitions, text scale {args.scale:g}, think time "
        f"{args.think_ms:g} ms mean between a session's turns; `{command(args)}`. "
        "Policies: bench/prefix_pool.py says how each router is configured. Figures: "
        "min / median / max over repetitions. Turns moved: the share of a session's later "
        "turns served by another worker than its turn before (multi-turn only).",
    ]
    titles = {
        "multi_turn": f"Multi-turn chat: {args.sessions} sessions x {args.turns} turns",
        "shared_prompt": (
            f"Shared system prompt: {args.questions} questions, {args.concurrency} at a time"
        ),
    }
    for workload in WORKLOADS:
        lines += ["", f"## {titles[workload]}", "", *rows(results[workload], args.workers)]
        lines += ratios(results[workload])
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help=f"Comma list, prefix and load_only included (default: all of {', '.join(POLICIES)}).",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=16, help="Output tokens a shared-prompt answer."
    )
    parser.add_argument(
        "--reply-tokens",
        type=int,
        default=REPLY_TOKENS,
        help="A chat turn's reply, at most (default: LMSYS-Chat-1M's mean).",
    )
    parser.add_argument(
        "--user-sentences",
        type=int,
        default=USER_SENTENCES,
        help="A chat turn's question in ~22-token sentences, at scale 1.",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="Text lengths (a slow machine: below 1)."
    )
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="Mean pause before a session's next turn (uniform in [0, 2x]; 0: none).",
    )
    parser.add_argument(
        "--cache-share",
        type=float,
        default=CACHE_SHARE,
        help="Each worker's MODELYARD_WORKER_PREFIX_CACHE_SHARE (every policy's alike).",
    )
    parser.add_argument("--quick", action="store_true", help="A smoke run.")
    parser.add_argument(
        "--samples",
        type=Path,
        help="Also write every request's sample here, one JSON object a line.",
    )
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.turns, args.questions, args.concurrency, args.reps = 2, 2, 4, 2, 1
        args.scale, args.reply_tokens = 0.2, 16
    policies = args.policies.split(",")
    if not {"prefix", "load_only"} <= set(policies) <= set(POLICIES):
        parser.error(f"--policies: prefix, load_only and any of {', '.join(POLICIES)}")
    with (
        tempfile.TemporaryDirectory() as tmp,
        prefix_pool(Path(tmp), args.workers, policies, args.cache_share) as routers,
    ):
        results = run_all(routers, args)
    if args.samples is not None:
        write_samples(args.samples, results)
    publish(RESULTS, report(results, args))


def write_samples(path: Path, results: Results) -> None:
    """Per request: workload, policy, repetition and the sample's fields."""
    with path.open("w") as out:
        for workload, policies in results.items():
            for policy, runs in policies.items():
                for rep, run in enumerate(runs):
                    for sample in run.samples:
                        record = {"workload": workload, "policy": policy, "rep": rep}
                        out.write(json.dumps(record | dataclasses.asdict(sample)) + "\n")


if __name__ == "__main__":
    main()
