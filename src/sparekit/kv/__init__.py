"""KV-cache compression by key L2 norm, with random, highest-norm, recent-window and SnapKV controls, as presses."""

from sparekit.kv.compress import (PRESSES, KVCompressor, Press, cache_bytes, keep_counts, kv_compress, make_press,
                                  register_press, select_positions)
from sparekit.kv.presses import InverseL2Press, L2Press, RandomPress, RecentPress, SinkRecentPress, SnapKVPress

__all__ = ["PRESSES", "InverseL2Press", "KVCompressor", "L2Press", "Press", "RandomPress", "RecentPress", "cache_bytes",
           "keep_counts", "kv_compress", "make_press", "register_press", "select_positions", "SinkRecentPress",
           "SnapKVPress"]
