"""`modelyard generate` and `modelyard chat`: stream tokens from the router."""

from __future__ import annotations

from typing import Annotated

import typer

from modelyard.cli.connect import (
    PLAINTEXT,
    ApiKeyOpt,
    router_client,
    tls_options,
)
from modelyard.cli.output import cli_errors, console, err_console, print_json
from modelyard.client import DEFAULT_ADDRESS, GenerationStream
from modelyard.tls import TlsSettings
from modelyard.v1 import common_pb2

RouterOpt = Annotated[
    str, typer.Option("--router", envvar="MODELYARD_ROUTER", help="Router host:port.")
]
ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help='Model "name", "name@version", a route name, or "auto".'),
]
MaxTokensOpt = Annotated[
    int,
    typer.Option(
        help="Most tokens to generate (0: to the end of the context or the route's ceiling;"
        " a terminal's default stays short)."
    ),
]
TemperatureOpt = Annotated[
    float | None, typer.Option(help="Sampling temperature; 0 is greedy. Default 1.0.")
]
TopPOpt = Annotated[float | None, typer.Option(help="Nucleus sampling mass in (0, 1].")]
StopOpt = Annotated[list[str] | None, typer.Option("--stop", help="Stop sequence; repeatable.")]
SeedOpt = Annotated[int | None, typer.Option(help="Random seed for reproducible sampling.")]
TimeoutOpt = Annotated[float, typer.Option(help="Deadline for the whole call, in seconds.")]


@tls_options
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt.")],
    model: ModelOpt = "auto",
    router: RouterOpt = DEFAULT_ADDRESS,
    chat_mode: Annotated[
        bool,
        typer.Option(
            "--chat/--completion",
            help="Send the prompt as a user chat message (the model's chat template) "
            "or as raw text to complete.",
        ),
    ] = True,
    system: Annotated[str, typer.Option(help="System message (chat mode).")] = "",
    max_tokens: MaxTokensOpt = 256,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    stop: StopOpt = None,
    seed: SeedOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print every protocol event as one JSON line.")
    ] = False,
    timeout: TimeoutOpt = 300.0,
    api_key: ApiKeyOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """Stream one generation to the terminal as tokens arrive."""
    messages: list[common_pb2.ChatMessage] = []
    if chat_mode:
        if system:
            messages.append(common_pb2.ChatMessage(role="system", content=system))
        messages.append(common_pb2.ChatMessage(role="user", content=prompt))
    with cli_errors(), router_client(router, tls, api_key=api_key, timeout_s=timeout) as client:
        stream = client.generate(
            model=model,
            prompt="" if chat_mode else prompt,
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop or (),
            seed=seed,
        )
        if json_out:
            for event in stream.events():
                print_json(event)
        else:
            print_stream(stream)


def print_stream(stream: GenerationStream) -> None:
    """Write deltas as they arrive, then a dim one-line summary on stderr."""
    try:
        for delta in stream:
            console.out(delta.text, end="", highlight=False)
            console.file.flush()
    except KeyboardInterrupt:
        stream.cancel()
        console.out("")
        err_console.print("[dim]cancelled[/dim]")
        raise typer.Exit(130) from None  # as typer exits on Ctrl-C elsewhere (shells expect it)
    console.out("")
    started, finished = stream.started, stream.finished
    if started is not None and finished is not None:
        reason = common_pb2.FinishReason.Name(finished.finish_reason).removeprefix("FINISH_REASON_")
        err_console.print(
            f"[dim]{started.model}@{started.version} on {started.worker_id} · "
            f"{finished.usage.input_tokens} in / {finished.usage.output_tokens} out · "
            f"ttft {finished.timings.ttft_ms:.0f} ms · "
            f"{finished.timings.decode_tokens_per_second:.1f} tok/s · {reason.lower()}[/dim]",
            highlight=False,
        )


@tls_options
def chat(
    model: ModelOpt = "auto",
    router: RouterOpt = DEFAULT_ADDRESS,
    system: Annotated[str, typer.Option(help="System message for the session.")] = "",
    max_tokens: MaxTokensOpt = 512,
    temperature: TemperatureOpt = None,
    seed: SeedOpt = None,
    timeout: TimeoutOpt = 300.0,
    api_key: ApiKeyOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """A multi-turn chat session. /reset forgets the history, /exit (or Ctrl-D) leaves."""
    history: list[common_pb2.ChatMessage] = []
    if system:
        history.append(common_pb2.ChatMessage(role="system", content=system))
    with cli_errors(), router_client(router, tls, api_key=api_key, timeout_s=timeout) as client:
        while True:
            try:
                line = console.input("[bold cyan]you>[/bold cyan] ").strip()
            except (EOFError, KeyboardInterrupt):
                console.out("")
                return
            if line in {"/exit", "/quit"}:
                return
            if line == "/reset":
                del history[1 if system else 0 :]
                continue
            if not line:
                continue
            history.append(common_pb2.ChatMessage(role="user", content=line))
            console.print("[bold green]model>[/bold green] ", end="")
            stream = client.generate(
                model=model,
                messages=history,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
            )
            print_stream(stream)
            history.append(common_pb2.ChatMessage(role="assistant", content=stream.text))
