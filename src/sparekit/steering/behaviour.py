"""Behaviour data: what the unsteered model does under conflict, and its hidden states.

Following SpARE: for every pool item and several seeds, prompts with k ∈ {3, 4, 5}
demonstrations from other groups in three flavours (sub_ctx+sub_ans, sub_ctx+org_ans,
org_ctx+org_ans) push the model toward either behaviour; the test item always carries
``sub_context``. The model's greedy answer labels the prompt (uses context / uses
memory; anything else is dropped). Hidden states are captured at the last prompt token
in the same prompt pass that generates the answer: no extra forward pass.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sparekit.data.dataset import ConflictDataset
from sparekit.data.formats import PromptFormat
from sparekit.data.prompts import THREE_SHOT, demo_block, demo_examples, item_format, sample_demos
from sparekit.errors import SparekitError
from sparekit.evaluation.generation import batches, greedy_generate
from sparekit.evaluation.metrics import behaviour_label
from sparekit.hooks import Hooks, Site
from sparekit.models.loading import LoadedModel
from sparekit.steering.base import BehaviourData, SteeringPrompt

BEHAVIOUR_FLAVOURS = ("sub_sub", "sub_org", "org_org")


def behaviour_prompts(pool: ConflictDataset, seeds: Sequence[int], k_choices: Sequence[int] = (3, 4, 5),
                      flavours: Sequence[str] = BEHAVIOUR_FLAVOURS,
                      demo_source: ConflictDataset | None = None, every_k: bool = False,
                      formats: Sequence[PromptFormat] = (THREE_SHOT,)) -> list[SteeringPrompt]:
    """Conflict prompts over ``pool`` × ``flavours`` × ``seeds``; demonstrations from other groups.

    By default each prompt draws its own k from ``k_choices`` and its own demonstration rows.
    ``every_k`` is the official code's recipe: every k for every seed, and the flavours of one
    (item, seed, k) show the *same* demonstration rows, so they differ only in what the
    demonstrations' contexts and answers teach. ``formats``: each item is asked in one of them
    (:func:`~sparekit.data.prompts.item_format`), its demonstrations rendered in it too, whatever the
    format's request-time number of shots: the demonstrations are what push the model to either side.
    """
    if len(pool) == 0:
        raise SparekitError("the feature-learning pool is empty", "use a larger dataset or a larger --pool")
    source = demo_source if demo_source is not None else pool
    prompts = []
    for seed in seeds:
        if every_k:
            for k in k_choices:
                rng = random.Random(f"{seed}:{k}")
                for example in pool:
                    rows, fmt = demo_examples(source, example.group, k, rng), item_format(example, formats)
                    prompts += [SteeringPrompt(example, "sub", tuple(demo_block(row, flavour, fmt)  # type: ignore[arg-type]
                                                                     for row in rows), fmt)
                                for flavour in flavours]
            continue
        rng = random.Random(seed)
        for example in pool:
            fmt = item_format(example, formats)
            for flavour in flavours:
                demos = sample_demos(source, example.group, rng.choice(list(k_choices)), flavour, rng, fmt)  # type: ignore[arg-type]
                prompts.append(SteeringPrompt(example, "sub", tuple(demos), fmt))
    return prompts


@torch.inference_mode()
def collect_behaviour_data(lm: LoadedModel, prompts: Sequence[SteeringPrompt], layers: Sequence[int],
                           pool: ConflictDataset | None = None, context_match: str = "answer",
                           batch_size: int = 8, progress: bool = True) -> BehaviourData:
    """Generate, label and capture hidden states for ``prompts`` (drops "other" answers)."""
    sites = [Site(lm.info.check_layer(layer)) for layer in sorted(set(layers))]
    kept: list[SteeringPrompt] = []
    labels: list[int] = []
    hidden: dict[int, list[torch.Tensor]] = {site.layer: [] for site in sites}
    counts = {"context": 0, "memory": 0, "other": 0}
    bar = tqdm(total=len(prompts), desc="behaviour data", unit="prompt", disable=not progress, leave=False)
    for chunk in batches(list(prompts), batch_size):
        hooks = Hooks(lm)
        for site in sites:
            hooks.capture(site, positions="last", when="prompt", dtype=torch.float32)
        with hooks:
            answers = greedy_generate(lm, [p.text for p in chunk], batch_size=len(chunk))
        for row, (prompt, answer) in enumerate(zip(chunk, answers)):
            label = behaviour_label(answer, prompt.example, context_match)  # type: ignore[arg-type]
            counts[label] += 1
            if label == "other":
                continue
            kept.append(prompt)
            labels.append(1 if label == "context" else 0)
            for site in sites:
                hidden[site.layer].append(hooks[site][row].cpu())
        bar.update(len(chunk))
        bar.set_postfix(counts)
    bar.close()
    stacked = {layer: torch.stack(rows) if rows else torch.empty(0, lm.info.d_model) for layer, rows in hidden.items()}
    return BehaviourData(kept, np.asarray(labels, dtype=np.int64), stacked, pool, meta={"label_counts": counts},
                        lm=lm)
