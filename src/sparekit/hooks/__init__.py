"""The shared hook mechanism: :class:`Hooks` and :class:`Site` (see :mod:`sparekit.hooks.core`)."""

from sparekit.hooks.core import Hooks, Site, StopForward, cache_keyword, is_prompt_pass, last_token_index

__all__ = ["Hooks", "Site", "StopForward", "cache_keyword", "is_prompt_pass", "last_token_index"]
