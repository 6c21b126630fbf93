"""The shared hook mechanism: :class:`Hooks` and :class:`Site` (see :mod:`sparekit.hooks.core`).

Imported on first use, deliberately (:mod:`sparekit.utils.lazy`): :class:`Site` alone
(:mod:`sparekit.hooks.site`) must not pull in transformers, which :mod:`sparekit.hooks.core` needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparekit.utils.lazy import lazy_attributes

if TYPE_CHECKING:
    from sparekit.hooks.core import Hooks, StopForward, cache_keyword, is_prompt_pass, last_token_index, site_table
    from sparekit.hooks.site import TRANSFORMERLENS_HOOKS, Site

_CORE, _SITE = "sparekit.hooks.core", "sparekit.hooks.site"
__getattr__, __dir__ = lazy_attributes(__name__, {
    "TRANSFORMERLENS_HOOKS": _SITE, "Site": _SITE, "Hooks": _CORE, "StopForward": _CORE, "cache_keyword": _CORE,
    "is_prompt_pass": _CORE, "last_token_index": _CORE, "site_table": _CORE})

__all__ = ["TRANSFORMERLENS_HOOKS", "Hooks", "Site", "StopForward", "cache_keyword", "is_prompt_pass",
           "last_token_index", "site_table"]
