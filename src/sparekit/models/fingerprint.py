"""A model fingerprint: does this stack compute the logits the package was tested with?

A transformers release can load a model without complaint and compute garbage
(5.17 dequantises the default GGUF wrongly: every answer is ``"\\na:\\na"``). Nothing
downstream can tell a broken stack from a model that knows nothing, so
:func:`load_model` checks, after loading a short-name model, the next-token
log-probabilities of a few fixed prompts against a reference shipped with the
package (computed on the pinned CPU stack, float32).

The comparison is a tolerance on log-probabilities, not an equality: other devices
and kernels move them by ~1e-3 (a GPU answers a few boundary items differently),
a broken stack by whole nats.
"""

from __future__ import annotations

import importlib.resources
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparekit.artifacts import header
from sparekit.errors import SparekitError
from sparekit.utils.env import package_versions
from sparekit.utils.io import atomic_write_json, read_json

#: Fixed prompts: a fact, the project's prompt format with a conflict, a pattern, plain text.
PROMPTS = (
    "The capital of France is",
    "context: The capital of France is Lyon.\nquestion: What is the capital of France?\nanswer:",
    "1, 2, 3, 4, 5,",
    "The quick brown fox jumps over the",
)
TOP_K = 5
#: The transformers releases the test suite passes on (keep equal to pyproject.toml; a test checks).
SUPPORTED_TRANSFORMERS = ">=5.23,<5.26"
FORMAT_VERSION = 1
#: Largest |Δ log p| accepted, by the dtype the model was loaded in.
TOLERANCE = {torch.float32: 0.1, torch.float16: 1.0, torch.bfloat16: 1.0}
#: Package versions recorded with a reference (and named in a mismatch error).
STACK = ("torch", "transformers", "gguf", "tokenizers")


@dataclass(frozen=True)
class FingerprintCheck:
    """The result of comparing a model with its reference."""

    ok: bool
    max_abs_diff: float
    tolerance: float
    worst_prompt: str
    reference_stack: dict[str, str | None]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
                "worst_prompt": self.worst_prompt, "reference_stack": self.reference_stack}


def reference_path(cache_name: str) -> Path:
    """Where the shipped reference for a short-name model lives."""
    return Path(str(importlib.resources.files("sparekit") / "assets" / "fingerprints" / f"{cache_name}.json"))


@torch.no_grad()
def next_token_log_probs(model: torch.nn.Module, tokenizer, prompts: tuple[str, ...] = PROMPTS) -> torch.Tensor:
    """Float32 log-probabilities of the next token after each prompt, ``[n_prompts, vocab]`` on the CPU.

    One prompt per forward call (no padding), so the numbers do not depend on batching.
    """
    device = next(model.parameters()).device
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[0, -1]
        rows.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    return torch.stack(rows)


def compute_reference(model: torch.nn.Module, tokenizer, model_name: str) -> dict[str, Any]:
    """The reference a later :func:`verify` compares with (top-k ids and their log-probabilities)."""
    log_probs = next_token_log_probs(model, tokenizer)
    top = log_probs.topk(TOP_K, dim=-1)
    return {**header("fingerprint", FORMAT_VERSION), "model": model_name, "prompts": list(PROMPTS),
            "top_ids": top.indices.tolist(), "top_log_probs": top.values.tolist(),
            "stack": package_versions(STACK), "dtype": "float32", "device": "cpu"}


def save_reference(reference: dict[str, Any], path: str | Path) -> None:
    atomic_write_json(path, reference)


def load_reference(path: str | Path) -> dict[str, Any]:
    """Read and validate a reference file; a missing or malformed one is an error, never a skipped check."""
    path = Path(path)
    if not path.is_file():
        raise SparekitError(f"model fingerprint reference missing: {path}",
                            "reinstall sparekit, or pass --no-verify to skip the check")
    reference = read_json(path)
    try:
        prompts, ids, values = reference["prompts"], reference["top_ids"], reference["top_log_probs"]
        ok = (reference.get("format_version") == FORMAT_VERSION and isinstance(prompts, list) and prompts
              and all(isinstance(p, str) for p in prompts) and len(ids) == len(values) == len(prompts)
              and all(len(i) == len(v) > 0 for i, v in zip(ids, values))
              and all(isinstance(t, int) and t >= 0 for row in ids for t in row)
              and all(isinstance(x, (int, float)) and math.isfinite(x) and x <= 0 for row in values for x in row))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise SparekitError(f"malformed model fingerprint reference: {path}",
                            "reinstall sparekit, or pass --no-verify to skip the check")
    return reference


def verify(model: torch.nn.Module, tokenizer, reference: dict[str, Any]) -> FingerprintCheck:
    """Compare the model's log-probabilities of the reference's top-k tokens with the reference's."""
    log_probs = next_token_log_probs(model, tokenizer, tuple(reference["prompts"]))
    ids = torch.tensor(reference["top_ids"], dtype=torch.long)
    if int(ids.max()) >= log_probs.shape[1]:
        diffs = torch.full((len(ids),), math.inf)
    else:
        diffs = (log_probs.gather(1, ids) - torch.tensor(reference["top_log_probs"])).abs().amax(1)
    dtype = next(model.parameters()).dtype
    tolerance = TOLERANCE.get(dtype, TOLERANCE[torch.float16])
    worst = int(diffs.argmax())
    max_diff = float(diffs[worst])
    return FingerprintCheck(max_diff <= tolerance, max_diff, tolerance, reference["prompts"][worst],
                            reference.get("stack", {}))


def mismatch_error(name: str, check: FingerprintCheck, cache_folder: Path | None) -> SparekitError:
    """One line naming the installed stack, the reference stack and the way out."""
    installed = ", ".join(f"{k} {v}" for k, v in package_versions(STACK).items() if v)
    tested = ", ".join(f"{k} {v}" for k, v in check.reference_stack.items() if v)
    hint = f"install transformers{SUPPORTED_TRANSFORMERS} (the tested range)"
    if cache_folder is not None:
        hint += f", delete {cache_folder} if an older install built it"
    return SparekitError(
        f"model {name!r} computes different logits than the tested stack "
        f"(max |Δ log p| {check.max_abs_diff:.3g} > {check.tolerance} on {check.worst_prompt!r}); "
        f"installed: {installed}; reference: {tested}",
        hint + ", or pass --no-verify to load it anyway",
    )
