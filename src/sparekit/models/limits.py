"""How long a prompt a loaded model can read here: its context length and the machine's memory.

Both are known before a forward pass starts, so :func:`check_prompt_length` refuses an over-long
prompt in one line instead of letting the forward run for minutes or die in the allocator.
:func:`sparekit.evaluation.generation.tokenize` calls it for every batch it builds, which covers
``generate``, ``eval``, ``steer``, probes, ``detect`` and the server.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sparekit.errors import SparekitError

try:
    import resource
except ImportError:  # Windows: no address-space limit to read
    resource = None  # type: ignore[assignment]


def context_length(model: torch.nn.Module) -> int | None:
    """The most positions the model reads (``max_position_embeddings``), or ``None`` if it does not say."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


def forward_bytes(model: torch.nn.Module, batch: int, n_tokens: int) -> int:
    """Rough peak memory of one forward over ``batch`` prompts of ``n_tokens``: one layer's attention as eager
    attention holds it (float32 scores and softmax per head plus a float mask: quadratic in the length, what
    grows first), its MLP activations and the whole KV cache."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", 0)
    head_dim = getattr(config, "head_dim", None) or hidden // max(heads, 1)
    layers = getattr(config, "num_hidden_layers", 1)
    mlp = getattr(config, "intermediate_size", None) or 4 * hidden
    element = next(model.parameters()).element_size()
    scores = batch * (2 * heads + 1) * n_tokens * n_tokens * 4
    activations = batch * n_tokens * (3 * mlp + 4 * hidden) * element
    kv_cache = 2 * layers * batch * n_tokens * kv_heads * head_dim * element
    return scores + activations + kv_cache


def memory_budget(device: torch.device) -> int | None:
    """Bytes a forward may still allocate on ``device``: free GPU memory, or the smaller of the available
    RAM and what the address-space limit (``ulimit -v``) leaves; ``None`` where it cannot be known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    budgets = []
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        if "MemAvailable" in fields:
            budgets.append(int(fields["MemAvailable"].split()[0]) * 1024)
    limit = resource.getrlimit(resource.RLIMIT_AS)[0] if resource is not None else -1
    status = Path(f"/proc/{os.getpid()}/status")
    if limit >= 0 and status.is_file():
        used = next((int(line.split()[1]) * 1024 for line in status.read_text().splitlines()
                     if line.startswith("VmSize:")), 0)
        budgets.append(max(limit - used, 0))
    return min(budgets) if budgets else None


def check_prompt_length(model: torch.nn.Module, name: str, device: torch.device, n_tokens: int,
                        batch: int = 1) -> None:
    """Refuse prompts longer than the model's context, or whose forward would not fit in memory here."""
    context = context_length(model)
    if context and n_tokens > context:
        raise SparekitError(f"a prompt has {n_tokens} tokens but {name} reads at most {context}",
                            "shorten it")
    need, budget = forward_bytes(model, batch, n_tokens), memory_budget(device)
    if budget is not None and need > budget:
        raise SparekitError(f"a forward pass over {batch} prompt(s) of {n_tokens} tokens needs about "
                            f"{need / 2**30:.1f} GiB but {device} has {budget / 2**30:.1f} GiB free",
                            "shorten the prompt, lower --batch-size, or free memory")
