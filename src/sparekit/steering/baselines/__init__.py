"""Baseline steering methods; importing this package registers them.

``none`` (no steering), ``icl`` (demonstrations showing the behaviour), ``cad``
(context-aware decoding), ``actadd`` (mean-difference vector), ``sea`` (linear
spectral editing), ``dola`` (final-vs-premature layer contrast) and ``knob`` (one
1-D subspace set to the target side).
"""

from sparekit.steering.baselines.actadd import ActAdd
from sparekit.steering.baselines.cad import ContextAwareDecoding
from sparekit.steering.baselines.dola import DoLa, logit_lens
from sparekit.steering.baselines.icl import InContextDemonstrations
from sparekit.steering.baselines.knob import Knob
from sparekit.steering.baselines.none import NoSteering
from sparekit.steering.baselines.one_layer import OneLayerMethod
from sparekit.steering.baselines.sea import SpectralEditing
from sparekit.steering.baselines.shadow import ShadowForward

__all__ = [
    "ActAdd", "ContextAwareDecoding", "DoLa", "InContextDemonstrations", "Knob", "NoSteering", "OneLayerMethod",
    "ShadowForward", "SpectralEditing", "logit_lens",
]
