"""``sparekit serve``: the conflict-aware answer server, one model per process."""

from __future__ import annotations

import click

from sparekit.cli.common import no_verify_option
from sparekit.cli.config import config_options
from sparekit.commands.serve import ServeCommand


def banner(served: dict) -> str:
    """The line said once the server listens (or before vLLM takes over)."""
    if served["engine"] == "vllm":
        return (f"sparekit serve: {served['model']} on {served['url']} through vLLM ({served['python']}); "
                "sparekit options go under extra_body={'sparekit': {...}}")
    return (f"sparekit serve: {served['model']} on {served['url']}  (detect: {'yes' if served['detect'] else 'no'}; "
            f"methods: {', '.join(served['methods'])}; playground at /)")


@click.command()
@config_options(ServeCommand)
@no_verify_option
def serve(config: ServeCommand) -> None:
    """Serve MODEL over HTTP: OpenAI-compatible /v1/completions, /v1/answer, /metrics, a playground at /.

    With --engine vllm, vLLM's OpenAI server answers instead (continuous batching, prefix caching), with
    detection and steering through the same extra_body={"sparekit": {...}} (plugins/vllm/README.md).

    \b
    Example:
      sparekit serve --port 8000 &
      curl -s localhost:8000/v1/answer -H 'Content-Type: application/json' \\
        -d '{"context": "The capital of France is Porto-Novo.", "question": "What is the capital of France?",
             "steer": {"toward": "memory"}}'
    """
    config.run(on_ready=lambda served: click.echo(banner(served), err=True))
