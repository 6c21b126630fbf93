"""sklearn's parameter contract, written once: constructor arguments are the parameters.

Every fitted object (probes, steering methods, the SAE trainer) stores each ``__init__``
argument under its own name, so ``get_params`` can read them back from the signature and
a saved object can be rebuilt as ``cls(**params)``.
"""

from __future__ import annotations

import inspect
from typing import Any

from sparekit.errors import SparekitError


class Params:
    """Mixin: ``get_params`` / ``set_params`` / ``repr`` from the ``__init__`` signature."""

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        return tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self, **params: Any) -> Params:
        valid = self.param_names()
        for key, value in params.items():
            if key not in valid:
                who = getattr(self, "kind", "") or type(self).__name__
                raise SparekitError(f"{who}: unknown parameter {key!r}", f"valid: {', '.join(valid)}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v is not None)
        return f"{type(self).__name__}({params})"
