"""`avatarbatch sandbox`: serve the offline Runware emulator in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer

from avatarbatch.cli.options import FAULTS_HELP, SandboxProfile, SandboxRender, stderr, user_errors
from avatarbatch.sandbox import settings as sandbox_settings
from avatarbatch.sandbox.config import SandboxConfig

#: The option defaults are the config's own, so the two cannot drift apart.
_DEFAULT = {name: field.default for name, field in SandboxConfig.model_fields.items()}


def sandbox(
    host: Annotated[
        str, typer.Option(metavar="ADDRESS", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="N", help="Port to listen on.")] = 8787,
    api_key: Annotated[
        str | None,
        typer.Option(metavar="KEY", help="Accept only this key (default: any non-empty key)."),
    ] = None,
    latency: Annotated[
        float, typer.Option(min=0, metavar="S", help="Render seconds per second of audio.")
    ] = _DEFAULT["latency"],
    fixed_latency: Annotated[
        float, typer.Option(min=0, metavar="S", help="Render seconds added to every task.")
    ] = _DEFAULT["fixed_latency"],
    workers: Annotated[
        int, typer.Option(min=1, metavar="N", help="Render slots; more tasks wait in a queue.")
    ] = _DEFAULT["workers"],
    render: Annotated[
        SandboxRender, typer.Option(help="full: real renders; stub: tiny cached videos.")
    ] = _DEFAULT["render"],
    faults: Annotated[str | None, typer.Option(metavar="SPEC", help=FAULTS_HELP)] = None,
    seed: Annotated[
        int, typer.Option(metavar="N", help="Seed that makes faults and seeds reproducible.")
    ] = _DEFAULT["seed"],
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote", help="Fetch inputs and call webhooks beyond loopback addresses."
        ),
    ] = False,
    balance: Annotated[
        float | None,
        typer.Option(metavar="USD", help="Submissions get HTTP 402 once billing reaches it."),
    ] = None,
    video_bytes: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Pad every MP4/MOV result to this size (sparse), to test big downloads.",
        ),
    ] = None,
    profile: Annotated[
        SandboxProfile,
        typer.Option(
            help="strict: one getResponse per request, 202 acknowledgements, a 2 s "
            "registration lag, 'completed' results, no videoURL with an uploadEndpoint, "
            "upload UUIDs never reused."
        ),
    ] = "default",
) -> None:
    """Serve the offline Runware emulator (POST /v1, GET /sandbox/ledger, /sandbox/stats)."""
    with user_errors():
        config = sandbox_settings.build(
            api_key=api_key,
            latency=latency,
            fixed_latency=fixed_latency,
            workers=workers,
            render=render,
            faults=faults,
            seed=seed,
            allow_remote=allow_remote,
            balance=balance,
            video_bytes=video_bytes,
            profile=profile,
        )
        if host not in ("127.0.0.1", "localhost", "::1") and not allow_remote:
            stderr().print(f"warning: serving on {host}: other machines can reach this sandbox")
        stderr().print(
            f"sandbox: http://{host}:{port}/v1 (ledger: /sandbox/ledger, stats: /sandbox/stats); "
            f"profile {config.profile}, faults: {config.faults}, seed {config.seed}; Ctrl-C stops",
            markup=False,
        )
        from avatarbatch.sandbox.server import serve  # only this command needs the server

        serve(config, host, port)
