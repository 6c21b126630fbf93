"""Conflict datasets (NQ-Swap schema), the embedded default dataset and few-shot prompts."""

from sparekit.data.dataset import ConflictDataset, ConflictExample, read_jsonl, split_by_group, write_jsonl
from sparekit.data.loaders import DATASET_NAMES, load_dataset

__all__ = ["DATASET_NAMES", "ConflictDataset", "ConflictExample", "load_dataset", "read_jsonl",
           "split_by_group", "write_jsonl"]
