"""Where in a model a hook acts: :class:`Site` (a layer and a component), torch- and transformers-free.

Kept apart from :mod:`sparekit.hooks.core` so that code running inside another engine's
environment (the vLLM plugin, ``plugins/vllm``) can name sites and read sparekit's SAE and
probe folders without importing transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sparekit.errors import SparekitError
from sparekit.utils.registry import unknown_name

Component = Literal["resid", "attn", "mlp", "heads"]

_COMPONENT_ORDER = {"heads": 0, "attn": 1, "mlp": 2, "resid": 3}
#: TransformerLens / SAELens hook name of each component (an alias :meth:`Site.parse` accepts)
TRANSFORMERLENS_HOOKS = {"resid": "blocks.{}.hook_resid_post", "attn": "blocks.{}.hook_attn_out",
                         "mlp": "blocks.{}.hook_mlp_out"}
_TRANSFORMERLENS = {f"hook_{name.split('hook_')[1]}": component for component, name in TRANSFORMERLENS_HOOKS.items()}


@dataclass(frozen=True, order=True)
class Site:
    """A place in the model: ``layer`` (0-based decoder block) and ``component``."""

    layer: int
    component: Component = "resid"

    def __post_init__(self) -> None:
        if self.component not in _COMPONENT_ORDER:
            raise unknown_name("component", self.component, _COMPONENT_ORDER)

    @property
    def depth(self) -> tuple[int, int]:
        """Execution order inside the forward pass."""
        return (self.layer, _COMPONENT_ORDER[self.component])

    def __str__(self) -> str:
        return f"{self.component}.{self.layer}"

    @property
    def aliases(self) -> tuple[str, ...]:
        """Other spellings :meth:`parse` reads as this site (``heads`` has none)."""
        if self.component not in TRANSFORMERLENS_HOOKS:
            return ()
        tl = TRANSFORMERLENS_HOOKS[self.component].format(self.layer)
        return (str(self.layer), tl) if self.component == "resid" else (tl,)

    @classmethod
    def parse(cls, text: str) -> Site:
        """``6``, ``resid.6`` / ``mlp.6`` / ``attn.6`` / ``heads.6``, or a TransformerLens name (``blocks.6.hook_mlp_out``)."""
        if text.startswith("blocks."):
            _, layer, hook = (text.split(".") + ["", ""])[:3]
            if hook in _TRANSFORMERLENS and layer.isdigit():
                return cls(int(layer), _TRANSFORMERLENS[hook])  # type: ignore[arg-type]
            valid = [name.format(layer or 0) for name in TRANSFORMERLENS_HOOKS.values()]
            raise unknown_name("TransformerLens hook", text, valid)
        component, _, layer = text.rpartition(".")
        try:
            return cls(int(layer), component or "resid")  # type: ignore[arg-type]
        except ValueError:
            raise SparekitError(f"cannot parse site {text!r}", "write e.g. 6, resid.6, mlp.6, attn.6 or heads.6") from None
