"""Gated steering: edit only the prompts a gate flags as conflicts.

:class:`RecallGate` fits nothing: it fires where the passage does not name the model's closed-book answer
(:func:`~sparekit.probes.training_free.unrecalled`, one short closed-book generation per question, the recall
detector's), so it has no calibration to lose on relations it never saw.

:class:`ProbeGate` is a conflict probe (org vs sub context) on the last prompt token, read in a
forward pass stopped at the probe's layer, with the steering's edits off, before the
steered generation (:class:`~sparekit.steering.base.Steered`): it sees what the unsteered
model sees, so a prompt it does not flag is decoded exactly as unsteered. Two choices
decide what it costs on prompts *without* conflict, and both are made on held-out
data, never on test: the layer (best dev AUROC among candidates) and the threshold
(the ``1 - max_false_positive_rate`` quantile of dev no-conflict scores), so the share of
no-conflict prompts it lets through is set on data like dev, rather than by the 0.5 default of
an uncalibrated probe; on other distributions (held-out relations) it can be higher.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from sparekit.activations.last_token import last_token_states
from sparekit.artifacts import KINDS, Artifact, read_artifact, save_artifact
from sparekit.errors import SparekitError
from sparekit.evaluation.generation import batches
from sparekit.hooks import Site
from sparekit.models.loading import LoadedModel
from sparekit.probes import LinearProbe
from sparekit.probes.training_free import RECALL_READING, recall_answers, unrecalled
from sparekit.steering.base import Gate, SteeringPrompt
from sparekit.utils.arrays import to_numpy
from sparekit.utils.registry import unknown_name


@KINDS.register("probe_gate")
class ProbeGate(Gate):
    """Steer only prompts whose conflict probability at ``layer`` is above ``threshold``."""

    def __init__(self, probe: LinearProbe, layer: int, threshold: float = 0.5):
        self.probe, self.site, self.threshold = probe, Site(layer), threshold
        self.report: dict[str, Any] = {}

    def fire(self, h: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.probe.predict_proba(to_numpy(h))[:, 1] > self.threshold, device=h.device)

    def signature(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.probe.tensors().items()):
            digest.update(name.encode() + to_numpy(tensor).tobytes())
        return f"probe:layer={self.site.layer}:threshold={self.threshold:.9g}:{digest.hexdigest()[:16]}"

    def save(self, path: str | Path, **report: Any) -> Path:
        """One folder: the probe's tensors, its parameters, layer, threshold and ``report`` (how they were chosen)."""
        params = {"layer": self.site.layer, "threshold": self.threshold, "probe": self.probe.get_params()}
        return save_artifact(path, self.kind, params, self.probe.tensors(),
                             {"n_features_in": self.probe.n_features_in_, "report": {**self.report, **report}})

    @classmethod
    def load(cls, path: str | Path, model_hash: str | None = None) -> ProbeGate:
        return cls.from_artifact(read_artifact(path, "probe_gate"), model_hash=model_hash)

    @classmethod
    def from_artifact(cls, artifact: Artifact, model_hash: str | None = None) -> ProbeGate:
        probe = LinearProbe.from_artifact(replace(artifact, params=artifact.params["probe"]), model_hash=model_hash)
        gate = cls(probe, int(artifact.params["layer"]), float(artifact.params["threshold"]))
        gate.report = dict(artifact.state.get("report", {}))
        return gate


class RecallGate(Gate):
    """Steer only prompts whose passage does not name the model's closed-book answer to the question.

    The recall detector's reading (``sparekit detect --detector recall``), so both say the same of a prompt: the
    closed-book answers to the question, asked with the detector's own two prompts
    (:func:`~sparekit.probes.training_free.recall_answers`, one batched generation), read by
    :func:`~sparekit.probes.training_free.unrecalled` against the prompt's closed-book twin
    (:attr:`SteeringPrompt.text_without_context`). :func:`~sparekit.probes.training_free.recall_answers` keeps the
    answers per (model, question): a prompt's conflict and no-conflict variants, every method a recall gate gates,
    and the recall detector's reading of the same question share one generation.
    """

    name = "recall"

    def signature(self) -> str:
        return f"recall:{RECALL_READING}"

    def decide(self, lm: LoadedModel, prompts: Sequence[SteeringPrompt]) -> torch.Tensor:
        return self.decide_texts(lm, [p.text for p in prompts], [p.text_without_context for p in prompts],
                                 [p.example.question for p in prompts])

    def decide_texts(self, lm: LoadedModel, texts: Sequence[str], closed: Sequence[str],
                     questions: Sequence[str]) -> torch.Tensor:
        answers, _ = recall_answers(lm, questions, batch_size=len(set(questions)))  # the new ones in one batch
        return torch.as_tensor(unrecalled(answers, questions, texts, closed) > 0.5)


#: the gates that fit nothing, by the name a fitted bundle records (``FittedBundle`` ``gate``)
TRAINING_FREE_GATES: dict[str, type[Gate]] = {RecallGate.name: RecallGate}


def training_free_gate(name: str) -> Gate:
    """A new gate that fits nothing, by name; one error line listing them for another name."""
    if name not in TRAINING_FREE_GATES:
        raise unknown_name("training-free gate", name, tuple(TRAINING_FREE_GATES))
    return TRAINING_FREE_GATES[name]()


def threshold_for_false_positive_rate(negative_scores: np.ndarray, max_false_positive_rate: float) -> float:
    """The smallest threshold at which at most ``max_false_positive_rate`` of ``negative_scores`` fire."""
    if not 0 <= max_false_positive_rate < 1:
        raise SparekitError(f"max false-positive rate must be in [0, 1), got {max_false_positive_rate}")
    if len(negative_scores) == 0:
        raise SparekitError("cannot calibrate a gate without no-conflict prompts")
    scores = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(max_false_positive_rate * len(scores)))  # prompts allowed to fire
    return float(scores[allowed]) if allowed < len(scores) else 0.0


def _states(lm: LoadedModel, prompts: Sequence[SteeringPrompt], sites: Sequence[Site],
            batch_size: int) -> dict[Site, np.ndarray]:

    parts = [last_token_states(lm, [p.text for p in chunk], sites) for chunk in batches(list(prompts), batch_size)]
    return {s: to_numpy(torch.cat([part[s] for part in parts])) for s in sites}


def fit_probe_gate(lm: LoadedModel, train: Sequence[SteeringPrompt], dev: Sequence[SteeringPrompt],
                   layers: Sequence[int], max_false_positive_rate: float = 0.05, batch_size: int = 8,
                   seed: int = 0) -> tuple[ProbeGate, dict[str, Any]]:
    """Fit a conflict probe per candidate layer on ``train``; keep the best on ``dev``; calibrate.

    Prompts with ``context == "sub"`` are conflicts (label 1), ``"org"`` are not. Returns
    the gate and a report (per-layer dev AUROC, the chosen layer, threshold, dev rates).
    """
    sites = [Site(lm.info.check_layer(layer)) for layer in layers]
    if not sites:
        raise SparekitError("no candidate layers for the conflict gate")
    y_train = np.asarray([int(p.context == "sub") for p in train])
    y_dev = np.asarray([int(p.context == "sub") for p in dev])
    if len(set(y_dev.tolist())) < 2:
        raise SparekitError("the gate's dev prompts need both conflict and no-conflict prompts")
    X_train, X_dev = _states(lm, train, sites, batch_size), _states(lm, dev, sites, batch_size)
    probes, auroc = {}, {}
    for site in sites:
        probes[site] = LinearProbe(seed=seed, site=str(site), model_hash=lm.info.model_hash).fit(X_train[site], y_train)
        auroc[site.layer] = float(roc_auc_score(y_dev, probes[site].predict_proba(X_dev[site])[:, 1]))
    best = max(sites, key=lambda s: (auroc[s.layer], -s.layer))
    scores = probes[best].predict_proba(X_dev[best])[:, 1]
    threshold = threshold_for_false_positive_rate(scores[y_dev == 0], max_false_positive_rate)
    fires = scores > threshold
    report = {"dev_auroc": auroc, "max_false_positive_rate": max_false_positive_rate,
              "dev_false_positive_rate": float(fires[y_dev == 0].mean()),
              "dev_true_positive_rate": float(fires[y_dev == 1].mean()), "n_train": len(train), "n_dev": len(dev)}
    return ProbeGate(probes[best], best.layer, threshold), report
