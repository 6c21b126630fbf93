"""Name -> class registries (SAE architectures and formats, steering methods, saved-object kinds):
one mechanism, strict lookups, and a one-line error that suggests the closest valid names."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from sparekit.errors import SparekitError

T = TypeVar("T")


def unknown_name(what: str, name: str, valid: Iterable[str], where: str = "") -> SparekitError:
    """``unknown <what> 'nmae'`` with the closest valid names first (``did you mean …``), then all of them."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.6)
    hint = (f"did you mean {' or '.join(map(repr, close))}? " if close else "") + f"known: {', '.join(valid)}"
    return SparekitError(f"{f'{where}: ' if where else ''}unknown {what} {name!r}", hint)


class Registry(dict[str, T], Generic[T]):
    """A dict of classes by name; ``@registry.register(name)`` sets ``cls.<attr> = name`` (``attr=None``: leaves it)."""

    def __init__(self, what: str, attr: str | None):
        super().__init__()
        self.what, self.attr = what, attr

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if name in self:
                raise RuntimeError(f"{self.what} {name!r} registered twice")
            if self.attr is not None:
                setattr(obj, self.attr, name)
            self[name] = obj
            return obj

        return wrap

    def lookup(self, name: str, where: str = "") -> T:
        """The object registered as ``name``, or a one-line error naming the closest known names."""
        if name not in self:
            raise unknown_name(self.what, name, self, where)
        return self[name]
