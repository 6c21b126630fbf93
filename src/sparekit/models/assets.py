"""The one registry of what the package ships for which model.

Fitted probes, conflict gates, tuned steering methods and SAEs only fit the weights they
were fitted on, so shipped assets are keyed by the model's fingerprint: the hash of its
weights (:attr:`ModelInfo.model_hash`). Every reader of a shipped asset asks here, and gets
``None`` for a model the package ships nothing for; nothing outside the package is read
implicitly.

Layout, per asset folder name (the model's cache name in :mod:`sparekit.models.loading`)::

    assets/probes/<name>/{detect.json, conflict/, source/}
    assets/steering/<name>/<method>/   a fitted bundle (:mod:`sparekit.steering.fitted`): config.json
                                       (naming a gate that fits nothing), context/, memory/, gate/ (a probe gate)
    assets/saes/<name>/resid.<layer>/
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from sparekit.models.architecture import ModelInfo
from sparekit.utils.io import read_json_object

ROOT = Path(__file__).resolve().parents[1] / "assets"
#: asset folder name -> hash of the weights its assets were fitted on (the GGUF's sha256 for short names)
SHIPPED = {"gemma-3-270m": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"}


@dataclass(frozen=True)
class ModelAssets:
    """Where one model's shipped assets live."""

    name: str
    model_hash: str

    @property
    def probes(self) -> Path:
        """The folder ``sparekit detect`` reads (``detect.json`` and one folder per probe target)."""
        return ROOT / "probes" / self.name

    @property
    def steering_root(self) -> Path:
        return ROOT / "steering" / self.name

    def steering(self, label: str) -> Path:
        """The fitted bundle of method ``label``: its dev-tuned methods per direction and its gate."""
        return self.steering_root / label

    def steering_labels(self, kinds: Collection[str] | None = None) -> list[str]:
        """Shipped fitted bundles (the folders holding a ``config.json``); with ``kinds``, only those whose every
        direction holds a method of one of them (a server mixes rows by residual edits: it skips CAD's bundle)."""
        found = sorted(p.name for p in self.steering_root.iterdir()
                       if (p / "config.json").is_file()) if self.steering_root.is_dir() else []
        return found if kinds is None else [label for label in found if self.steering_kinds(label) <= set(kinds)]

    def steering_kinds(self, label: str) -> set[str]:
        """The method kinds of bundle ``label``'s directions (read from their configs, nothing loaded)."""
        return {read_json_object(config).get("kind") for config in self.steering(label).glob("*/config.json")
                if config.parent.name in ("memory", "context")}

    def gates(self) -> dict[str, str]:
        """Each gated bundle's gate: the folder of its calibrated probe gate, or the name of the gate that fits
        nothing it names (``recall``)."""
        gates = {}
        for label in self.steering_labels():
            folder = self.steering(label) / "gate"
            if folder.is_dir():
                gates[label] = str(folder)
            elif name := read_json_object(self.steering(label) / "config.json").get("params", {}).get("gate"):
                gates[label] = str(name)
        return gates

    def saes(self) -> dict[int, Path]:
        """Shipped residual-stream SAEs by layer."""
        folder = ROOT / "saes" / self.name
        found = folder.glob("resid.*") if folder.is_dir() else ()
        return dict(sorted((int(p.name.split(".")[1]), p) for p in found))

    def describe(self) -> dict:
        """What ``sparekit ls`` shows."""
        return {"name": self.name, "model_hash": self.model_hash,
                "probes": str(self.probes) if (self.probes / "detect.json").is_file() else None,
                "gates": self.gates(),
                "steering": {label: str(self.steering(label)) for label in self.steering_labels()},
                "saes": {layer: str(path) for layer, path in self.saes().items()}}


def assets_for(model: ModelInfo | str) -> ModelAssets | None:
    """The shipped assets of a loaded model (matched by weights hash) or of a short model name; ``None`` if none."""
    if isinstance(model, ModelInfo):
        name = next((n for n, h in SHIPPED.items() if h == model.model_hash), None)
    else:
        from sparekit.models.loading import _CACHE_NAMES  # deliberately lazy: loading pulls in transformers

        name = _CACHE_NAMES.get(model, model)
    return ModelAssets(name, SHIPPED[name]) if name in SHIPPED else None


def default_assets() -> ModelAssets:
    """The default model's assets (always shipped)."""
    from sparekit.models.loading import _CACHE_NAMES  # deliberately lazy: loading pulls in transformers

    return ModelAssets(_CACHE_NAMES["default"], SHIPPED[_CACHE_NAMES["default"]])
