"""NVIDIA kvpress's ``KnormPress`` on given token ids: the positions it keeps, and its answers.

Runs in the kvpress environment (``bash scripts/kvpress_env.sh``), started by
``benchmarks/bench_kvpress.py``; sparekit is not importable there. It reads a JSON request
(model folder, ratios, items of context and question token ids) and writes a JSON answer.
Each item goes through kvpress's own pipeline code (``KVPressTextGenerationPipeline._forward``:
prefill under the press, then the question read through the compressed cache and greedy
decoding), without its chat template, so both tools see the same token ids.

    .venv-kvpress/bin/python benchmarks/kvpress_worker.py REQUEST.json ANSWER.json

:func:`kept_positions` is shared with the driver: it needs nothing but torch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch


def key_signatures(keys: torch.Tensor) -> torch.Tensor:
    """One int64 per key ``[b, h, n]`` from its exact bits: a gathered key keeps its signature."""
    bits = keys.float().contiguous().view(torch.int32).long()
    weights = torch.arange(1, bits.shape[-1] + 1, dtype=torch.long) * 0x9E3779B1
    return (bits * weights).sum(-1)  # int64 wraps: exact and order-free


def kept_positions(before: torch.Tensor, after: torch.Tensor) -> list[list[int]]:
    """Per head of row 0, the sorted positions of ``before``'s keys that ``after`` holds.

    ``before`` ``[b, h, n, d]`` is a layer's cache after the prompt pass, ``after`` ``[b, h, k, d]``
    its first ``k`` slots once compressed. Raises if a kept key is not found bit for bit.
    """
    sig_before, sig_after = key_signatures(before[:1]), key_signatures(after[:1])
    out = []
    for head in range(sig_before.shape[1]):
        order = sig_before[0, head].argsort()
        sorted_sig = sig_before[0, head][order]
        found = torch.searchsorted(sorted_sig, sig_after[0, head]).clamp(max=len(order) - 1)
        if not bool((sorted_sig[found] == sig_after[0, head]).all()):
            raise ValueError(f"head {head}: a kept key is not one of the prompt's keys")
        out.append(sorted(int(p) for p in order[found]))
    return out


def recording_press(base: type):
    """A ``base`` press (KnormPress) that records, per layer, the positions its compression kept."""

    class Recording(base):
        def __post_init__(self):
            super().__post_init__()
            self.kept: dict[int, list[list[int]]] = {}
            self.compress_s = 0.0

        def compress(self, module, hidden_states, keys, values, attentions, kwargs):
            start = time.perf_counter()
            new_keys, new_values = super().compress(module, hidden_states, keys, values, attentions, kwargs)
            self.compress_s += time.perf_counter() - start
            self.kept[module.layer_idx] = kept_positions(keys, new_keys)
            return new_keys, new_values

    return Recording


def run(request: dict) -> dict:
    """Every item at every ratio: kept positions per layer and head, the answer, seconds spent compressing.

    The pipeline prefills into a ``DynamicCache()`` made without the model's config, so on Gemma 3
    every layer (sliding ones too) holds the whole prompt, and every layer is compressed: kvpress
    leaves sliding layers alone only for ``Gemma3ForConditionalGeneration``, not the text-only model.
    """
    # deliberately lazy: this module is imported by the driver, where kvpress is not installed
    import kvpress
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    torch.set_num_threads(request.get("threads", 1))
    model = AutoModelForCausalLM.from_pretrained(request["model"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(request["model"])
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer, device="cpu")
    results = []
    for item in request["items"]:
        inputs = {"context_ids": torch.tensor([item["context"]]), "questions_ids": [torch.tensor([item["question"]])]}
        for ratio in request["ratios"]:
            press = recording_press(kvpress.KnormPress)(compression_ratio=ratio)
            with torch.inference_mode():
                answer = pipe._forward(inputs, max_new_tokens=request["steps"], press=press)[0]
            results.append({"item": item["id"], "ratio": ratio, "answer": answer, "compress_s": press.compress_s,
                            "kept": {str(layer): heads for layer, heads in press.kept.items()}})
    return {"versions": {name: version(name) for name in ("kvpress", "transformers", "torch")}, "results": results}


def main() -> None:
    request_path, answer_path = Path(sys.argv[1]), Path(sys.argv[2])
    answer = run(json.loads(request_path.read_text()))
    tmp = answer_path.with_name(answer_path.name + ".tmp")
    tmp.write_text(json.dumps(answer))
    os.replace(tmp, answer_path)


if __name__ == "__main__":
    main()
