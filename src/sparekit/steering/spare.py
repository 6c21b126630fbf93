"""SpARE: steer knowledge selection by editing SAE features (Zhao et al., NAACL 2025).

Per layer: SAE pre-activation codes ``z`` of the last prompt token; per feature the
mutual information with the behaviour label (min-max scaled ``z``, seeded) and the
mean difference ``E = mean_context(z) - mean_memory(z)``. Features are taken in MI
order until their cumulative MI reaches ``mi_mass`` (K) × total MI; ``E > 0`` makes a
context feature, ``E < 0`` a memory feature. Steering toward memory removes up to
``α·z̄_C`` of each context feature and tops memory features up to ``α·z̄_M``;
toward context it swaps the roles. The edit is added to ``h`` as a difference of
decoded codes (the decoder bias cancels); ``h`` is never replaced by a reconstruction.

``selection="output_score"`` (after Arad, Mueller & Belinkov, EMNLP 2025: keep features by
their effect on the output, not only by how they activate) keeps, among the MI candidates,
only the features whose decoder direction moves the output toward their own side. The
score is a cheap logit lens, not the paper's: each candidate's decoder row goes straight
through the final norm and the unembedding (:func:`~sparekit.steering.output_effect.direction_logits`,
ignoring the blocks after its layer), and the score is its mean logit on the first token of
each behaviour example's ``sub_answer`` minus that of its ``org_answer``. A context feature
is kept if the score is positive, a memory feature if it is negative. Arad et al. instead
*steer* with each feature and measure how much its top logit-lens tokens rise in the steered
next-token distribution (a forward pass per feature), a task-agnostic score; this one is
task-specific (it asks about the conflict's two answers) and needs no extra forward pass.

``selection="consistent"`` keeps, among the MI candidates, only the features whose side (the
sign of ``E``) is the same within every relation of the behaviour data that shows both
behaviours. A feature that marks "uses the context" on capitals but "uses memory" on currencies
describes the relations, not the choice between context and memory, and steers a relation it
was not fitted on the wrong way. It needs behaviour data from at least two relations.

``selection="within_relation"`` ranks features by the mutual information with the label *within*
each relation, I(z; label | relation) (the per-relation MI weighted by the relation's share of
rows, over the relations that show both behaviours), and takes each feature's side from the
within-relation mean differences. Pooled MI also rewards a feature that only says which relation a
prompt is about, when relations use the context at different rates; conditioned on the relation such
a feature carries nothing. It needs behaviour data from at least two relations.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.feature_selection import mutual_info_classif

from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.models.loading import LoadedModel, parameter_hash
from sparekit.models.placement import site_device
from sparekit.sae import SAE, check_compatible, load_sae
from sparekit.sae.base import sae_class, spare_delta
from sparekit.steering.base import BehaviourData, ControlVector, Direction, EditFn, register
from sparekit.steering.layered import MultiLayerMethod
from sparekit.steering.output_effect import answer_first_tokens, direction_logits
from sparekit.utils.arrays import to_numpy

SELECTIONS = ("mi", "output_score", "consistent", "within_relation")


def select_by_mi_mass(mi: np.ndarray, mass: float) -> np.ndarray:
    """Indices of the smallest MI-ordered prefix whose cumulative MI reaches ``mass`` × total."""
    if not 0 < mass <= 1:
        raise SparekitError(f"mi_mass must be in (0, 1], got {mass}")
    order = np.argsort(-mi, kind="stable")
    total = float(mi.sum())
    if total <= 0:
        return order[:0]
    cumulative = np.cumsum(mi[order])
    count = int(np.searchsorted(cumulative, mass * total, side="left")) + 1
    return order[: min(count, len(order))]


def feature_mutual_information(z: torch.Tensor, labels: np.ndarray, seed: int) -> np.ndarray:
    """MI between each min-max-scaled feature and the label; constant features get 0."""
    z = to_numpy(z).astype(np.float64)
    low, span = z.min(0), z.max(0) - z.min(0)
    active = span > 0
    mi = np.zeros(z.shape[1])
    if active.any():
        scaled = (z[:, active] - low[active]) / span[active]
        mi[active] = mutual_info_classif(scaled, labels, discrete_features=False, random_state=seed)
    return mi


#: rows of each behaviour a relation needs before its within-relation statistics count: the k-NN estimate of
#: mutual information drops a behaviour seen once (and fails where both are), and one row is no mean difference
MIN_ROWS_PER_BEHAVIOUR = 2


def _relations_with_both(labels: np.ndarray, relations: list[str | None], selection: str) -> list[np.ndarray]:
    """Row masks of the relations whose behaviour data shows both behaviours, each at least
    :data:`MIN_ROWS_PER_BEHAVIOUR` times (at least 2 such relations needed)."""
    masks = []
    for relation in sorted({r for r in relations if r is not None}):
        rows = np.array([r == relation for r in relations])
        if min((labels[rows] == 1).sum(), (labels[rows] == 0).sum()) >= MIN_ROWS_PER_BEHAVIOUR:
            masks.append(rows)
    if len(masks) < 2:
        raise SparekitError(f"spare: selection={selection!r} needs behaviour data from at least 2 relations that "
                            f"show both behaviours, each at least {MIN_ROWS_PER_BEHAVIOUR} times (found "
                            f"{len(masks)})", "use selection='mi' on this dataset, or collect more behaviour data")
    return masks


def _mean_difference(z: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """``mean_context(z) - mean_memory(z)`` per feature."""
    return z[torch.as_tensor(labels == 1)].mean(0) - z[torch.as_tensor(labels == 0)].mean(0)


def relation_consistent_sides(z: torch.Tensor, labels: np.ndarray, relations: list[str | None]) -> torch.Tensor:
    """Per feature, the sign of ``mean_context(z) - mean_memory(z)`` where every relation with both
    behaviours agrees on it, else 0."""
    sides = torch.stack([torch.sign(_mean_difference(z[torch.as_tensor(rows)], labels[rows]))
                         for rows in _relations_with_both(labels, relations, "consistent")])
    return torch.where((sides == sides[0]).all(0), sides[0], torch.zeros_like(sides[0]))


def within_relation_information(z: torch.Tensor, labels: np.ndarray, relations: list[str | None],
                                seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """(I(z; label | relation) per feature, the row-weighted mean of the within-relation mean differences)."""
    masks = _relations_with_both(labels, relations, "within_relation")
    counts = np.array([rows.sum() for rows in masks], dtype=np.float64)
    weights = counts / counts.sum()
    mi, diff = np.zeros(z.shape[1]), torch.zeros(z.shape[1], dtype=z.dtype, device=z.device)
    for weight, rows in zip(weights, masks):
        part = z[torch.as_tensor(rows, device=z.device)]
        mi += weight * feature_mutual_information(part, labels[rows], seed)
        diff += float(weight) * _mean_difference(part, labels[rows])
    return mi, diff


def _answer_tokens(data: BehaviourData) -> tuple[torch.Tensor, torch.Tensor]:
    """First tokens of (sub_answer, org_answer) of each distinct behaviour example whose two answers differ there."""

    lm = data.model("spare")
    examples = list({p.example.id: p.example for p in data.prompts}.values())
    context = answer_first_tokens(lm, [ex.sub_answer[0] for ex in examples])
    memory = answer_first_tokens(lm, [ex.org_answer[0] for ex in examples])
    differ = context != memory
    if not differ.any():
        raise SparekitError("spare: output_score needs examples whose two answers start with different tokens")
    return context[differ], memory[differ]


def output_scores(lm: LoadedModel, sae: SAE, features: torch.Tensor, context_tokens: torch.Tensor,
                  memory_tokens: torch.Tensor) -> torch.Tensor:
    """Per feature: mean logit-lens logit of its decoder row on the context answers' first tokens minus
    the memory answers' (positive: the feature pushes the output toward the context's answer)."""

    with torch.no_grad():
        rows = sae.decode_delta(torch.eye(sae.d_sae, device=sae.W_dec.device)[features.to(sae.W_dec.device)])
    logits = direction_logits(lm, rows, torch.cat([context_tokens, memory_tokens]))
    n = len(context_tokens)
    return (logits[:, :n] - logits[:, n:]).mean(1)


@register("spare")
class SpARE(MultiLayerMethod):
    """SAE-based representation engineering at the last prompt token of several layers."""

    strength_grid = (1.0, 2.0, 4.0, 8.0)
    default_strength = 2.0

    def __init__(self, layers: tuple[int, ...] = (5, 6, 7, 8), sae: str = "default", mi_mass: float = 0.07,
                 seed: int = 0, selection: str = "mi"):
        self.layers_param = layers
        self.sae = sae
        self.mi_mass = mi_mass
        self.seed = seed
        self.selection = selection

    def _sae(self, layer: int) -> SAE:
        cache = self.__dict__.setdefault("_saes", {})
        if layer not in cache:
            cache[layer] = load_sae(self._sae_source(layer), layer=layer).eval()
        return cache[layer]

    def _sae_source(self, layer: int) -> str:
        return self.sae if self.sae == "default" else self.sae.format(layer=layer)

    def fit(self, data: BehaviourData) -> SpARE:
        if self.selection not in SELECTIONS:
            raise SparekitError(f"spare: unknown selection {self.selection!r}", f"use one of: {', '.join(SELECTIONS)}")
        data.require_both_classes(self.kind)
        labels = data.labels
        self.context_idx_, self.memory_idx_ = {}, {}
        self.mean_context_, self.mean_memory_, self.mi_ = {}, {}, {}
        answers = _answer_tokens(data) if self.selection == "output_score" else None
        relations = [p.example.relation for p in data.prompts]
        for layer in self.layers:
            sae = self._sae(layer)
            with torch.no_grad():
                z = sae.pre_acts(data.layer(layer, self.kind).to(sae.W_enc.device))
            z_context, z_memory = z[torch.as_tensor(labels == 1)].mean(0), z[torch.as_tensor(labels == 0)].mean(0)
            if self.selection == "within_relation":  # rank and side from inside each relation
                mi, difference = within_relation_information(z, labels, relations, self.seed)
            else:
                mi, difference = feature_mutual_information(z, labels, self.seed), z_context - z_memory
            chosen = torch.as_tensor(select_by_mi_mass(mi, self.mi_mass), dtype=torch.long)
            diff = difference[chosen]
            if answers is not None:  # keep only features whose output effect agrees with their side
                score = output_scores(data.model(self.kind), sae, chosen, *answers)
                diff = torch.where(torch.sign(score) == torch.sign(diff), diff, torch.zeros_like(diff))
            if self.selection == "consistent":  # keep only features on the same side in every relation
                sides = relation_consistent_sides(z, labels, relations)[chosen]
                diff = torch.where(sides == torch.sign(diff), diff, torch.zeros_like(diff))
            self.context_idx_[layer], self.memory_idx_[layer] = chosen[diff > 0], chosen[diff < 0]
            self.mean_context_[layer], self.mean_memory_[layer] = z_context, z_memory
            self.mi_[layer] = torch.as_tensor(mi, dtype=torch.float32)
        self.fitted_ = True
        return self

    def selected(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(context features, memory features) chosen at ``layer``."""
        return self.context_idx_[layer], self.memory_idx_[layer]

    def edits(self, lm: LoadedModel, toward: Direction, strength: float | None) -> list[tuple[Site, EditFn]]:
        alpha = float(self.default_strength if strength is None else strength)
        return [(Site(layer), self._edit(lm, layer, toward, alpha)) for layer in self.layers]

    def _targets(self, layer: int, toward: Direction, alpha: float, device: torch.device
                 ) -> tuple[SAE, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(SAE, features to remove, their targets, features to add, their targets) at ``layer``."""
        sae = self._sae(layer).to(device)
        context_idx, memory_idx = (t.to(device) for t in self.selected(layer))
        mean_context, mean_memory = self.mean_context_[layer].to(device), self.mean_memory_[layer].to(device)
        if toward == "memory":  # remove context features, add memory features
            remove_idx, remove_mean, add_idx, add_mean = context_idx, mean_context, memory_idx, mean_memory
        else:
            remove_idx, remove_mean, add_idx, add_mean = memory_idx, mean_memory, context_idx, mean_context
        return sae, remove_idx, alpha * remove_mean[remove_idx], add_idx, alpha * add_mean[add_idx]

    def _edit(self, lm: LoadedModel, layer: int, toward: Direction, alpha: float) -> EditFn:

        sae, remove_idx, remove_target, add_idx, add_target = self._targets(layer, toward, alpha,
                                                                            site_device(lm, layer))
        check_compatible(sae, lm.info, self.sae)

        def edit(h: torch.Tensor) -> torch.Tensor:
            z = sae.pre_acts(h.float())
            return h + spare_delta(z, sae, remove_idx, remove_target, add_idx, add_target).to(h.dtype)

        return edit

    def control_vector(self, toward: Direction, strength: float) -> ControlVector:
        """Approximate: SpARE's edit depends on the input's SAE codes; this is the edit of the mean code of
        the behaviour group steered away from (the uses-context prompts when steering toward memory)."""
        vectors = {}
        with torch.no_grad():
            for layer in self.layers:
                sae, *targets = self._targets(layer, toward, float(strength), torch.device("cpu"))
                source = (self.mean_context_ if toward == "memory" else self.mean_memory_)[layer]
                vectors[layer] = spare_delta(source[None].float(), sae, *targets)[0]
        return ControlVector(vectors, exact=False, note="spare: the edit of the steered-away group's mean SAE code, "
                                                        "not the input-dependent edit SpARE applies")

    # -- persistence: a saved SpARE carries its SAEs, or names shipped ones by content hash ----------
    def _embeds_saes(self) -> bool:
        """Shipped SAEs travel with the package; any other SAE is copied into the saved folder."""
        return self.sae != "default"

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = super().state_tensors()
        if self._embeds_saes():
            for layer in self.layers:
                tensors.update({f"sae.{layer}.{k}": v for k, v in self._sae(layer).state_dict().items()})
        return tensors

    def state_extra(self) -> dict[str, Any]:
        saes = {}
        for layer in self.layers:
            sae = self._sae(layer)
            saes[layer] = {"sha256": parameter_hash(sae), "embedded": self._embeds_saes(),
                           "architecture": sae.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae,
                           "init": sae.init_kwargs()}
        return {"n_context_features": {L: len(self.selected(L)[0]) for L in self.layers},
                "n_memory_features": {L: len(self.selected(L)[1]) for L in self.layers}, "saes": saes}

    def load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """Rebuild embedded SAEs, or load the named ones and check they are the SAEs it was fitted with."""
        super().load_state({k: v for k, v in tensors.items() if not k.startswith("sae.")}, extra)
        cache = self.__dict__.setdefault("_saes", {})
        for key, info in extra.get("saes", {}).items():  # absent in folders saved before format 2
            layer = int(key)
            if info["embedded"]:
                prefix = f"sae.{layer}."
                sae = sae_class(info["architecture"])(info["d_in"], info["d_sae"], **info["init"])
                try:
                    sae.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)})
                except RuntimeError as exc:  # missing or misshapen tensors
                    raise SparekitError(f"spare: the saved SAE of layer {layer} is damaged: "
                                        f"{str(exc).splitlines()[0]}", "save the method again") from None
                where = "its saved copy"
            else:
                sae, where = load_sae(self._sae_source(layer), layer=layer), f"SAE {self._sae_source(layer)!r}"
            if parameter_hash(sae) != info["sha256"]:
                raise SparekitError(f"spare: {where} at layer {layer} is not the SAE this method was fitted with "
                                    f"(content hash {parameter_hash(sae)[:12]}…, expected {info['sha256'][:12]}…)",
                                    "refit SpARE with this SAE, or restore the SAE it was fitted with")
            cache[layer] = sae.eval()
