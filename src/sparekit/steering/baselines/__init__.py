"""Baseline steering methods; importing this package registers them.

``none`` (no steering), ``icl`` (demonstrations showing the behaviour), ``cad``
(context-aware decoding), ``adacad`` (CAD with a per-token weight), ``juice`` (attention-head
intervention from a clean first run), ``actadd`` (mean-difference vector), ``sea`` (linear
spectral editing), ``dola`` (final-vs-premature layer contrast), ``knob`` (one
1-D subspace set to the target side) and ``cvec`` (fixed vectors at several layers, fitted
or imported from a llama.cpp control vector).
"""

from sparekit.steering.baselines.actadd import ActAdd
from sparekit.steering.baselines.adacad import AdaptiveContextAwareDecoding
from sparekit.steering.baselines.cad import ContextAwareDecoding
from sparekit.steering.baselines.dola import DoLa
from sparekit.steering.baselines.icl import InContextDemonstrations
from sparekit.steering.baselines.juice import JUICE
from sparekit.steering.baselines.knob import Knob
from sparekit.steering.baselines.none import NoSteering
from sparekit.steering.baselines.sea import SpectralEditing
from sparekit.steering.baselines.vector import VectorSteering

__all__ = [
    "ActAdd", "AdaptiveContextAwareDecoding", "ContextAwareDecoding", "DoLa", "InContextDemonstrations", "JUICE",
    "Knob", "NoSteering", "SpectralEditing", "VectorSteering",
]
