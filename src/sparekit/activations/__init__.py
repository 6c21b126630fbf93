"""Capture hidden states to a sharded safetensors store and read them back (see :mod:`.store`)."""

from sparekit.activations.last_token import last_token_states
from sparekit.activations.store import ActivationStore, capture_activations

__all__ = ["ActivationStore", "capture_activations", "last_token_states"]
