"""``sparekit serve``: the conflict-aware answer server, one model per process."""

from __future__ import annotations

from pathlib import Path

import click

from sparekit.cli.common import device_option, model_option


@click.command()
@model_option
@device_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--probe", "probe_dir", type=click.Path(path_type=Path), default=None,
              help="Conflict/source probes (default: the last `sparekit probe` run, then the shipped ones).")
@click.option("--fitted", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="A fitted method folder (<run>/fitted/<method>); repeatable. Default: the shipped ones.")
@click.option("--max-batch", default=16, show_default=True, type=click.IntRange(1, 256),
              help="Most prompts in one batched generate.")
@click.option("--batch-wait-ms", default=10.0, show_default=True, type=click.FloatRange(0, 1000),
              help="How long the first request of a batch waits for others to join.")
@click.option("--max-queue", default=256, show_default=True, type=click.IntRange(1),
              help="Prompts waiting (429 above).")
@click.option("--max-streams", default=32, show_default=True, type=click.IntRange(1),
              help="Streaming responses open at once (429 above).")
@click.option("--max-body-bytes", default=1_000_000, show_default=True, type=click.IntRange(1), help="413 above.")
@click.option("--max-prompt-tokens", default=2048, show_default=True, type=click.IntRange(1), help="400 above.")
@click.option("--max-tokens", "max_new", default=256, show_default=True, type=click.IntRange(1),
              help="Largest max_tokens a request may ask for (400 above).")
@click.option("--max-strength", default=16.0, show_default=True, type=click.FloatRange(0),
              help="Largest steering strength a request may ask for (422 above).")
@click.option("--kv-compress", "kv_ratio", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share of each prompt's KV cache to evict by key L2 norm after the prompt pass (sparekit.kv).")
@click.option("--drain-timeout", default=30.0, show_default=True, type=click.FloatRange(0),
              help="On SIGTERM, seconds in-flight requests get to finish (new ones get 503).")
def serve(model, device, host, port, probe_dir, fitted, max_batch, batch_wait_ms, max_queue, max_streams,
          max_body_bytes, max_prompt_tokens, max_new, max_strength, kv_ratio, drain_timeout) -> None:
    """Serve MODEL over HTTP: OpenAI-compatible /v1/completions, /v1/answer, /metrics, a playground at /.

    \b
    Example:
      sparekit serve --port 8000 &
      curl -s localhost:8000/v1/answer -H 'Content-Type: application/json' \\
        -d '{"context": "The capital of France is Porto-Novo.", "question": "What is the capital of France?",
             "steer": {"toward": "memory"}}'
    """
    try:
        from sparekit.serve import Limits, Server, build_engine, create_app
    except ImportError as exc:
        from sparekit.errors import SparekitError

        raise SparekitError(f"sparekit serve needs {exc.name}", "pip install 'sparekit[serve]'") from None
    from sparekit.models import load_model

    engine = build_engine(load_model(model, device=device), probe_dir, fitted, kv_ratio)
    limits = Limits(max_body_bytes, max_prompt_tokens, max_new, max_queue, max_streams, max_batch, batch_wait_ms,
                    max_strength, drain_timeout)
    detect = "yes" if engine.can_detect else "no"
    click.echo(f"sparekit serve: {engine.lm.info.name} on http://{host}:{port}  (detect: {detect}; "
               f"methods: {', '.join(engine.method_names())}; playground at /)", err=True)
    Server(create_app(engine, limits), host=host, port=port, log_level="warning").run()
