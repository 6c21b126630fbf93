"""The worker extension: hooks vLLM's decoder layers and runs :class:`~sparekit_vllm.runtime.Runtime` there.

Start vLLM with ``--worker-extension-cls sparekit_vllm.worker.SparekitWorkerExtension`` (``sparekit serve
--engine vllm`` does), then ``collective_rpc("sparekit_install")`` once (the API middleware does, on the
first sparekit request). Per step, each request's plan comes from its ``SamplingParams.extra_args`` and
its last prompt token from the runner's persistent batch (:func:`~sparekit_vllm.rows.last_prompt_tokens`).

vLLM's decoder layers return ``(hidden, residual)``, the residual stream being their sum (the next
layer's fused add-and-norm adds them). A read takes that sum; a write puts the new value in ``residual``
and zero in ``hidden``, so the next layer sees exactly the edited value. Python hooks need eager mode
(``--enforce-eager``): a compiled or graph-captured model would not run them per step.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from sparekit_vllm.bundle import bundle_from_env
from sparekit_vllm.options import Plan
from sparekit_vllm.rows import last_prompt_tokens
from sparekit_vllm.runtime import Runtime

log = logging.getLogger(__name__)


class SparekitWorkerExtension:
    """Mixed into vLLM's worker class; its methods are called through ``collective_rpc``."""

    def sparekit_install(self) -> list[int]:
        """Load the folders and hook the layers they act on (idempotent); returns those layers."""
        runtime = getattr(self, "_sparekit_runtime", None)
        if runtime is None:
            runtime = Runtime(bundle_from_env())
            _install(self.model_runner, runtime)  # type: ignore[attr-defined]
            self._sparekit_runtime = runtime
        return runtime.layers

    def sparekit_take(self, key: str) -> dict | None:
        """The readings of the request whose plan had ``key`` (``None`` if there are none (yet))."""
        runtime = getattr(self, "_sparekit_runtime", None)
        return None if runtime is None else runtime.take(key)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a vLLM causal LM (``model.model.layers`` in vLLM's model files)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise RuntimeError(f"sparekit-vllm: cannot find the decoder layers of {type(model).__name__}")
    return layers


def _install(runner: Any, runtime: Runtime) -> None:
    if getattr(runner, "speculative_config", None) is not None:
        raise RuntimeError("sparekit-vllm: speculative decoding is not supported (a step would hold draft tokens)")
    model = runner.get_model()
    layers = decoder_layers(model)
    step: dict[str, Any] = {"scheduler_output": None}
    original = runner.execute_model

    def execute_model(scheduler_output, *args, **kwargs):
        step["scheduler_output"] = scheduler_output
        try:
            return original(scheduler_output, *args, **kwargs)
        finally:
            step["scheduler_output"] = None
            runtime.end()

    def plan_step(module, args) -> None:  # the runner has laid out this step's batch by now
        if step["scheduler_output"] is not None:
            runtime.begin(_step_plans(runner, step["scheduler_output"]))

    runner.execute_model = execute_model
    model.register_forward_pre_hook(plan_step)
    for layer in runtime.layers:
        if type(layers[layer]).__name__ == "PPMissingLayer":
            raise RuntimeError("sparekit-vllm: pipeline parallelism is not supported (layer "
                               f"{layer} runs on another rank)")
        layers[layer].register_forward_hook(_layer_hook(runtime, layer))


def _step_plans(runner: Any, scheduler_output: Any) -> list:
    """The step's (last prompt token, plan) pairs; decoding-only steps cost one pass over the batch."""
    batch = runner.input_batch
    req_ids = list(batch.req_ids)
    n = len(req_ids)
    scheduled = [scheduler_output.num_scheduled_tokens[r] for r in req_ids]
    found = []
    for token in last_prompt_tokens(scheduled, batch.num_computed_tokens_cpu[:n].tolist(),
                                    batch.num_prompt_tokens[:n].tolist()):
        params = runner.requests[req_ids[token.row]].sampling_params
        try:
            plan = Plan.from_extra_args(getattr(params, "extra_args", None))
        except (ValueError, TypeError, KeyError) as exc:  # sent around the API server's checks
            log.warning("sparekit-vllm: ignoring a malformed plan: %s", exc)
            continue
        if plan is not None:
            found.append((token, plan))
    return found


def _layer_hook(runtime: Runtime, layer: int):
    def hook(module, args, output):
        if not runtime.active:
            return None
        hidden, residual = output
        edited: dict[str, torch.Tensor] = {}

        def read(index: torch.Tensor) -> torch.Tensor:
            h, r = edited.get("hidden", hidden), edited.get("residual", residual)
            return h[index] + r[index]

        def write(index: torch.Tensor, values: torch.Tensor) -> None:
            if not edited:  # the batch's other rows keep their tensors' values; these are copies
                edited.update(hidden=hidden.clone(), residual=residual.clone())
            edited["hidden"][index] = 0
            edited["residual"][index] = values.to(residual.dtype)

        runtime.on_layer(layer, read, write)
        return (edited["hidden"], edited["residual"]) if edited else None

    return hook
