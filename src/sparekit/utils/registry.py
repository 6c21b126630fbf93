"""Name -> class registries (SAE architectures, steering methods): one mechanism, strict lookups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from sparekit.errors import SparekitError

T = TypeVar("T", bound=type)


class Registry(dict[str, T], Generic[T]):
    """A dict of classes by name; ``@registry.register(name)`` sets ``cls.<attr> = name``."""

    def __init__(self, what: str, attr: str):
        super().__init__()
        self.what, self.attr = what, attr

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(cls: T) -> T:
            if name in self:
                raise RuntimeError(f"{self.what} {name!r} registered twice")
            setattr(cls, self.attr, name)
            self[name] = cls
            return cls

        return wrap

    def lookup(self, name: str, where: str = "") -> T:
        """The class registered as ``name``, or a one-line error listing the known names."""
        if name not in self:
            prefix = f"{where}: " if where else ""
            raise SparekitError(f"{prefix}unknown {self.what} {name!r}", f"known: {', '.join(sorted(self))}")
        return self[name]
