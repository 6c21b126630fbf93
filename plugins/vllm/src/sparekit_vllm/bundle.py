"""What the plugin reads and steers with: the folders sparekit saves, read by sparekit's own readers.

Only transformers-free sparekit modules are imported (:mod:`sparekit.artifacts`, :class:`LinearProbe`,
:class:`ProbeSet`, :func:`read_states`, :func:`load_sae`, :func:`spare_delta`), because vLLM pins its
own transformers. Folders, as ``sparekit serve`` takes them:

* probes: ``<dir>/{detect.json, conflict/, source/}`` (``sparekit probe``), default the shipped ones;
* fitted methods: ``<root>/{context,memory}/{config.json, tensors.safetensors, tuned.json}``
  (``sparekit bench steer``'s ``fitted/<method>``) and the gate beside them, default the shipped ones.

Shipped assets are used only for the model they were fitted on, and a fitted bundle, probe or gate tuned on
another model is refused in one line, as the built-in engine refuses it. The served model's hash is the one
sparekit gives the same ``--model``: the hash its model cache records for a cached short name
(``sparekit_source.json``), else the hash of the folder's weight files (:func:`~sparekit.utils.io.weights_hash`,
computed once per file and cached), else ``hub:<id>`` for a hub id.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sparekit.artifacts import CONFIG, Artifact, read_artifact, refuse_other_model, split_keyed
from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.models.assets import SHIPPED, ModelAssets
from sparekit.probes.linear import LinearProbe
from sparekit.probes.reading import ProbeSet
from sparekit.serve.options import RowSteer
from sparekit.sae import load_sae
from sparekit.sae.base import spare_delta
from sparekit.utils.arrays import to_numpy
from sparekit.utils.io import read_json_object, weights_hash

from sparekit_vllm.options import DIRECTIONS, Served

EditFn = Callable[[torch.Tensor], torch.Tensor]
#: which steering kinds the plugin can apply: residual edits at the last prompt token
SERVABLE = ("spare", "actadd", "knob", "cvec")
TARGETS = ("conflict", "source")


@dataclass(frozen=True)
class ThresholdGate:
    """A saved conflict gate (``probe_gate``): steer where the probe's p(conflict) at ``site`` is above
    ``threshold`` (:class:`~sparekit.probes.reading.SiteGate`, so :func:`read_states` decides with it)."""

    probe: LinearProbe
    site: Site
    threshold: float

    def fire(self, h: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.probe.predict_proba(to_numpy(h))[:, 1] > self.threshold)


@dataclass(frozen=True)
class Fitted:
    """One fitted method for one direction and its dev-tuned strength."""

    artifact: Artifact
    strength: float

    @property
    def layers(self) -> tuple[int, ...]:
        params = self.artifact.params
        return tuple(int(x) for x in params.get("layers", ())) or (int(params["layer"]),)


@dataclass
class Bundle:
    probes: ProbeSet | None = None
    methods: dict[str, dict[str, Fitted]] = field(default_factory=dict)
    gates: dict[str, ThresholdGate] = field(default_factory=dict)
    shipped: ModelAssets | None = None
    _edits: dict[RowSteer, dict[int, EditFn]] = field(default_factory=dict)

    def capabilities(self, max_strength: float = 16.0) -> Served:
        return Served(
            methods={label: {t: f.strength for t, f in per.items()} for label, per in self.methods.items()},
            gates=frozenset(self.gates), can_detect=self.probes is not None,
            probe_layer=max(s.layer for s in self.probes.sites.values()) if self.probes else None,
            first_edit_layer={label: min(f.layers[0] for f in per.values()) for label, per in self.methods.items()},
            max_strength=max_strength)

    def edits(self, steer: RowSteer) -> dict[int, EditFn]:
        """The edit per layer for (method, direction, strength), built once (SAEs load on first use)."""
        key = RowSteer(steer.method, steer.toward, steer.strength)
        if key not in self._edits:
            fitted = self.methods[steer.method][steer.toward]
            self._edits[key] = _BUILDERS[fitted.artifact.kind](fitted.artifact, steer.toward, steer.strength,
                                                              self.shipped)
        return self._edits[key]


def load_bundle(model_folder: str | Path | None = None, probe_dir: str | Path | None = None,
                fitted: Sequence[str | Path] = ()) -> Bundle:
    """Probes (``probe_dir``, else shipped, else none) and fitted methods (``fitted``, else shipped)."""
    model_hash = _model_hash(model_folder)
    name = next((n for n, h in SHIPPED.items() if h == model_hash), None)
    shipped = ModelAssets(name, SHIPPED[name]) if name else None
    bundle = Bundle(shipped=shipped)
    probe_folder = Path(probe_dir) if probe_dir else (shipped.probes if shipped else None)
    if probe_folder is not None and (probe_dir or (probe_folder / "detect.json").is_file()):
        bundle.probes = load_probe_set(probe_folder, model_hash)
    roots = [Path(r) for r in fitted] or ([shipped.steering(label) for label in shipped.steering_labels(SERVABLE)]
                                          if shipped else [])
    for root in roots:
        bundle.methods[root.name] = _load_method(root, model_hash)
        if (root / "gate" / CONFIG).is_file():
            bundle.gates[root.name] = _load_gate(root / "gate", model_hash)
    return bundle


def bundle_from_env() -> Bundle:
    """The bundle ``sparekit serve --engine vllm`` configures through the environment (every vLLM process
    reads the same variables): ``SPAREKIT_VLLM_MODEL``, ``SPAREKIT_VLLM_PROBES``, ``SPAREKIT_VLLM_FITTED``
    (folders joined by ``os.pathsep``)."""
    fitted = [p for p in os.environ.get("SPAREKIT_VLLM_FITTED", "").split(os.pathsep) if p]
    return load_bundle(os.environ.get("SPAREKIT_VLLM_MODEL"), os.environ.get("SPAREKIT_VLLM_PROBES") or None, fitted)


def load_probe_set(folder: Path, model_hash: str | None) -> ProbeSet:
    """The conflict (required) and source (optional) probes of a ``sparekit probe`` folder."""
    folder = folder / "probes" if (folder / "probes").is_dir() else folder
    probes = {t: LinearProbe.load(folder / t, model_hash=model_hash) for t in TARGETS if (folder / t).is_dir()}
    if "conflict" not in probes:
        raise SparekitError(f"{folder} has no conflict probe", "pass a folder written by `sparekit probe`")
    return ProbeSet(probes, folder)


def _model_hash(model: str | Path | None) -> str | None:
    """The hash sparekit gives the served ``model`` (``None``: not told, nothing is checked)."""
    if not model:
        return None
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return f"hub:{model}"
    marker = folder / "sparekit_source.json"
    return read_json_object(marker).get("sha256") if marker.is_file() else weights_hash(folder)


def _load_method(root: Path, model_hash: str | None) -> dict[str, Fitted]:
    """A fitted bundle (:mod:`sparekit.steering.fitted`): each direction's method and its dev-tuned strength,
    kept in the bundle's ``config.json`` (a direction without one takes the kind's default, as sparekit does);
    refused when tuned on another model than ``model_hash``."""
    if not (root / CONFIG).is_file():
        raise SparekitError(f"no fitted method in {root} (missing {CONFIG})",
                            "pass a folder from `sparekit bench steer` (<run>/fitted/<method>)")
    params = read_artifact(root, "fitted_steering").params
    refuse_other_model(root, params.get("model_hash"), model_hash)
    tuned = params.get("tuned") or {}
    per = {}
    for toward in (t for t in DIRECTIONS if t in tuned):
        artifact = read_artifact(root / toward)
        if artifact.kind not in SERVABLE:
            raise SparekitError(f"{root / toward} holds a {artifact.kind!r} method, which the vLLM plugin cannot "
                                "apply", f"serve one of: {', '.join(SERVABLE)}")
        strength = tuned[toward].get("strength")
        per[toward] = Fitted(artifact, float(_DEFAULT_STRENGTH[artifact.kind] if strength is None else strength))
    return per


def _load_gate(folder: Path, model_hash: str | None) -> ThresholdGate:
    artifact = read_artifact(folder, "probe_gate")
    params = dict(artifact.params)
    probe = LinearProbe.from_artifact(Artifact(folder, "linear_probe", dict(params["probe"]), artifact.state,
                                               artifact.tensors), model_hash=model_hash)
    return ThresholdGate(probe, Site(int(params["layer"])), float(params["threshold"]))


# -- the edits, per saved kind (the same arithmetic as each method's ``edits`` in sparekit.steering) ---------
def _sign(toward: str) -> float:
    return 1.0 if toward == "context" else -1.0


def _shift(vector: torch.Tensor) -> EditFn:
    return lambda h: h + vector.to(h.dtype)


def _actadd(artifact: Artifact, toward: str, strength: float, _: ModelAssets | None) -> dict[int, EditFn]:
    return {int(artifact.params["layer"]): _shift(_sign(toward) * strength * artifact.tensors["vector_"])}


def _cvec(artifact: Artifact, toward: str, strength: float, _: ModelAssets | None) -> dict[int, EditFn]:
    sign = 1.0 if toward == artifact.state.get("toward", "context") else -1.0
    return {int(layer): _shift(sign * strength * v) for layer, v in split_keyed(artifact.tensors)["vector_"].items()}


def _knob(artifact: Artifact, toward: str, strength: float, _: ModelAssets | None) -> dict[int, EditFn]:
    u = artifact.tensors["direction_"].float()
    p_context, p_memory = (float(x) for x in artifact.tensors["projections_"])
    gap = p_context - p_memory
    target = p_context + strength * gap if toward == "context" else p_memory - strength * gap

    def edit(h: torch.Tensor) -> torch.Tensor:
        return (h.float() + (target - h.float() @ u)[:, None] * u).to(h.dtype)

    return {int(artifact.params["layer"]): edit}


def _spare(artifact: Artifact, toward: str, strength: float, shipped: ModelAssets | None) -> dict[int, EditFn]:
    state, source = split_keyed(artifact.tensors), str(artifact.params.get("sae", "default"))
    edits = {}
    for layer in (int(x) for x in artifact.params["layers"]):
        if source == "default" and (shipped is None or layer not in shipped.saes()):
            raise SparekitError(f"{artifact.path} steers with sparekit's shipped SAEs, which fit another model")
        sae = load_sae(shipped.saes()[layer] if source == "default" else source.format(layer=layer), layer=layer)
        remove, add = ("context", "memory") if toward == "memory" else ("memory", "context")
        remove_idx, add_idx = state[f"{remove}_idx_"][layer].long(), state[f"{add}_idx_"][layer].long()
        remove_target = strength * state[f"mean_{remove}_"][layer][remove_idx]
        add_target = strength * state[f"mean_{add}_"][layer][add_idx]
        edits[layer] = _spare_edit(sae.eval(), remove_idx, remove_target, add_idx, add_target)
    return edits


def _spare_edit(sae, remove_idx, remove_target, add_idx, add_target) -> EditFn:
    def edit(h: torch.Tensor) -> torch.Tensor:
        z = sae.pre_acts(h.float())
        return h + spare_delta(z, sae, remove_idx, remove_target, add_idx, add_target).to(h.dtype)

    return edit


_BUILDERS = {"actadd": _actadd, "cvec": _cvec, "knob": _knob, "spare": _spare}
_DEFAULT_STRENGTH = {"actadd": 4.0, "cvec": 1.0, "knob": 1.0, "spare": 2.0}
