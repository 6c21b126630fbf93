"""The shared hook mechanism: :class:`Hooks` and :class:`Site` (see :mod:`sparekit.hooks.core`)."""

from sparekit.hooks.core import (
    TRANSFORMERLENS_HOOKS,
    Hooks,
    Site,
    StopForward,
    cache_keyword,
    is_prompt_pass,
    last_token_index,
    site_table,
)

__all__ = ["TRANSFORMERLENS_HOOKS", "Hooks", "Site", "StopForward", "cache_keyword", "is_prompt_pass",
           "last_token_index", "site_table"]
