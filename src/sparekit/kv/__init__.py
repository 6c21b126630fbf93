"""KV-cache compression by key L2 norm, with random, highest-norm and recent-window controls."""

from sparekit.kv.compress import METHODS, KVCompressor, cache_bytes, keep_counts, key_scores, kv_compress, select_positions

__all__ = ["METHODS", "KVCompressor", "cache_bytes", "keep_counts", "key_scores", "kv_compress", "select_positions"]
