"""The one way a tensor leaves torch: detached and on the CPU, whatever device it was on.

``tensor.numpy()`` works on a CPU test machine and crashes on a GPU one
(``can't convert cuda:0 device type tensor to numpy``); ``tests/test_device_clean.py``
forbids calling it anywhere else in the package.
"""

from __future__ import annotations

import numpy as np
import torch


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as a NumPy array, copied to the CPU first when it lives elsewhere."""
    return tensor.detach().cpu().numpy()
