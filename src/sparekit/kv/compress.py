"""KV-cache compression after the prompt pass: presses, applied as in NVIDIA's kvpress.

Devoto et al. (EMNLP 2024) observed that keys with a low L2 norm draw high attention,
so evicting the highest-norm keys of a long prompt costs little accuracy. A *press* is
one eviction method with its options, checked when it is built; it is applied to a
model with ``with press(model):``, as kvpress users know (a loaded model, or the bare
Hugging Face model as kvpress takes it). Usage::

    from sparekit.kv import L2Press

    with L2Press(ratio=0.5)(lm.model) as kv:
        out = lm.model.generate(**batch, max_new_tokens=20)
    kv.kv_bytes, kv.kv_bytes_uncompressed            # what the prompt's cache held, after / before

Methods are registered by name (``@register_press("l2")``, like steering methods), so
``make_press("random", ratio=0.5, seed=1)`` or ``kv_compress(lm, method="random", ...)``
build one from a command line's strings; :mod:`sparekit.kv.presses` holds them.

What happens, per layer and KV head, right before the first decoding step reads it:

* each row (prompt) of ``min_length`` real tokens or more loses ``floor(ratio * n_real)``
  of its prompt positions: those with the worst score. Scores are computed in float32
  (in bf16 most key norms of a head tie and rounding would choose). The last
  ``keep_last`` real positions are always kept (the question usually sits there), and
  padding is never kept over a real position. The first ``keep_first`` real positions
  (one count, or one per row) are an uncompressed prefix: always kept and outside the
  ratio and ``min_length``, which apply to the rest (demonstrations before a compressed passage).
* A press's :meth:`Press.scores` ranks the positions; :mod:`sparekit.kv.presses` says how each does.
* Every head of a row keeps the same *number* of positions, so the cache stays one dense
  ``[batch, kv_heads, kept, head_dim]`` tensor per layer, as NVIDIA's kvpress does. Rows
  of a batch keep different numbers (their real lengths differ), so a row shorter than
  the widest is filled at the front with slots that are masked out.
* Layers in ``skip_layers`` (the paper leaves the first two alone) and sliding-window
  layers (Gemma 2/3's local layers: their cache is already cut to the window, and its
  offset bookkeeping assumes contiguous positions) keep their cache as it is, and
  are counted as held in ``kv_bytes``. On Gemma 3 only the global layers (one in six) are
  compressed.

Pruning makes a layer's cache columns stop lining up with the model's 2-D attention
mask (which ``generate`` keeps extending by one column per token), and layers hold
different lengths. So the one mechanism this uses, ``Hooks.intercept`` on every
attention module, also rewrites each full-attention layer's mask during decoding from
the layer's own slot validity (kept, filler or padding) and the 2-D mask of the tokens
generated since. Positions are untouched: keys are cached with their rotary position
applied, and ``generate`` derives position ids from the 2-D mask, not from the cache length.
Supported: ``eager`` and ``sdpa`` attention; greedy or sampled decoding (beam search and
assisted decoding reorder or crop the cache behind the per-row slot bookkeeping: not supported).

The conflict probe is not affected by construction: it reads the last prompt token of the
prompt pass, which runs on the full cache; pruning only changes what decoding attends to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers.cache_utils import Cache, DynamicLayer

from sparekit.errors import SparekitError
from sparekit.hooks import Hooks, Site
from sparekit.models.architecture import ModelInfo, describe
from sparekit.models.loading import LoadedModel
from sparekit.utils.registry import Registry

SUPPORTED_ATTENTION = ("eager", "sdpa")
PRESSES: Registry = Registry("KV compression method", "name")


def register_press(name: str) -> Callable[[type], type]:
    """Register a :class:`Press` subclass under ``name`` (a second press of the same name raises)."""
    return PRESSES.register(name)


def model_and_info(model: LoadedModel | torch.nn.Module) -> tuple[torch.nn.Module, ModelInfo]:
    """A loaded model's parts, or a bare Hugging Face causal LM with its layout read from it."""
    if isinstance(model, LoadedModel):
        return model.model, model.info
    return model, describe(model, type(model).__name__, model_hash="")


def non_negative_int(name: str, value: Any) -> None:
    """A one-line error unless ``value`` is an ``int`` >= 0 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SparekitError(f"{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class Press:
    """One eviction method and its options, checked when built; ``with press(lm):`` applies it.

    ``ratio`` is the share of each prompt's positions evicted in every compressed layer;
    see the module docstring for what is kept, what is skipped and why. Subclasses add
    their own options as fields and rank positions in :meth:`scores`.
    """

    name: ClassVar[str]
    reads_prompt_pass: ClassVar[bool] = False  # scores from the prompt pass (observe): run it inside the press
    ratio: float = 0.5
    skip_layers: tuple[int, ...] = (0, 1)
    min_length: int = 128
    keep_last: int = 8
    keep_first: int | tuple[int, ...] = 0

    def __post_init__(self) -> None:
        ratio = self.ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise SparekitError(f"KV compression ratio must be in [0, 1), got {ratio!r}",
                                "0 keeps everything, 0.9 evicts 90 % of each prompt")
        for name in ("min_length", "keep_last"):
            non_negative_int(name, getattr(self, name))
        if isinstance(self.keep_first, list):
            object.__setattr__(self, "keep_first", tuple(self.keep_first))
        for count in self.keep_first if isinstance(self.keep_first, tuple) else (self.keep_first,):
            non_negative_int("keep_first", count)
        if not isinstance(self.skip_layers, (tuple, list)):
            raise SparekitError(f"skip_layers must be a list of layer indices, got {self.skip_layers!r}")
        object.__setattr__(self, "skip_layers", tuple(self.skip_layers))  # a list from a config file is hashable now
        for layer in self.skip_layers:
            non_negative_int("a skipped layer", layer)

    def first_counts(self, batch: int) -> torch.Tensor:
        """``keep_first`` per row ``[batch]``; a per-row count must match the batch it is applied to."""
        if not isinstance(self.keep_first, tuple):
            return torch.full((batch,), self.keep_first)
        if len(self.keep_first) != batch:
            raise SparekitError(f"keep_first holds {len(self.keep_first)} counts for a batch of {batch} prompts")
        return torch.tensor(self.keep_first)

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The option names this press takes (its fields)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def observe(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        """What a query-aware press keeps of a layer's prompt pass for :meth:`scores` (default: nothing)."""
        return None

    def scores(self, keys: torch.Tensor, prompt_mask: torch.Tensor, observed: Any) -> torch.Tensor:
        """Eviction scores ``[batch, heads, seq]`` in float32: the lowest are kept first."""
        raise NotImplementedError

    def check(self, model: torch.nn.Module, info: ModelInfo) -> None:
        """Refuse a model this press cannot compress (skipped layers out of range, attention kind)."""
        for layer in self.skip_layers:
            info.check_layer(layer)
        implementation = getattr(model.config, "_attn_implementation", None)
        if implementation not in SUPPORTED_ATTENTION:
            raise SparekitError(f"KV compression needs eager or sdpa attention, the model uses {implementation!r}",
                                "load the model with attn_implementation='sdpa'")

    @contextmanager
    def __call__(self, model: LoadedModel | torch.nn.Module,
                 observed: dict[int, Any] | None = None) -> Iterator[KVCompressor]:
        """Prune the KV cache of every prompt after its prompt pass while the context is open.

        ``observed`` is what another ``with press(model) as kv`` kept of the same prompt pass
        (``kv.observed``): a cache copied from that pass is then compressed as if its prompt
        pass had run inside this context (prefill once, compress many). :meth:`observe` must
        not depend on ``ratio`` for that.
        """
        compressor = KVCompressor(*model_and_info(model), self, observed)
        with compressor.hooks:
            yield compressor


def make_press(method: str, **options: Any) -> Press:
    """The press registered as ``method`` with ``options``; an option it does not take is a one-line error."""
    cls = PRESSES.lookup(method)
    unknown = sorted(set(options) - set(cls.options()))
    if unknown:
        raise SparekitError(f"KV compression method {method!r} takes no option {', '.join(unknown)}",
                            f"its options: {', '.join(cls.options())}")
    return cls(**options)


def kv_compress(lm: LoadedModel, method: str = "l2", **options: Any) -> AbstractContextManager[KVCompressor]:
    """``make_press(method, **options)(lm)``: a press by name, applied while the context is open."""
    return make_press(method, **options)(lm)


def keep_counts(n_real: torch.Tensor, ratio: float, min_length: int, keep_last: int,
                keep_first: torch.Tensor | int = 0) -> torch.Tensor:
    """Positions each row keeps: its first ``keep_first``, then of the ``n`` after them all below
    ``min_length``, else ``n - floor(ratio * n)``, at least ``keep_last``."""
    first = torch.minimum(torch.as_tensor(keep_first, device=n_real.device), n_real)
    n = n_real - first
    dropped = torch.floor(n.double() * ratio).long()
    kept = torch.maximum(n - dropped, torch.clamp(n, max=keep_last))
    return first + torch.where(n < min_length, n, kept)


def select_positions(scores: torch.Tensor, prompt_mask: torch.Tensor, keep: torch.Tensor, keep_last: int,
                     keep_first: torch.Tensor | int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Which prompt positions each (row, head) keeps, as ``(index [b, h, width], valid [b, width])``.

    ``width`` is the largest row's count; a row keeping fewer gets filler slots first
    (``valid`` False), then its kept positions in their original order. The last ``keep_last``
    and first ``keep_first`` (per row) real positions are kept whatever their score.
    """
    batch, heads, seq = scores.shape
    real = prompt_mask.bool()
    from_end = real.flip(-1).long().cumsum(-1).flip(-1)  # real tokens at or after each position
    first = torch.as_tensor(keep_first, device=real.device).reshape(-1, 1)
    protected = real & ((from_end <= keep_last) | (real.long().cumsum(-1) <= first))
    scores = scores.masked_fill(protected[:, None], float("-inf")).masked_fill(~real[:, None], float("inf"))
    width = int(keep.max())
    best = scores.argsort(dim=-1, stable=True)[..., :width]  # [b, h, width], best first
    rank = torch.arange(width, device=scores.device)
    kept = rank[None, None] < keep.to(scores.device)[:, None, None]
    order_key = torch.where(kept, best, best - seq)  # filler sorts before every kept position
    index = best.gather(-1, order_key.argsort(dim=-1))
    valid = rank[None] >= (width - keep.to(scores.device))[:, None]
    return index, valid


def cache_bytes(cache: Cache) -> int:
    """Bytes the keys and values of ``cache`` hold."""
    return sum(layer.keys.nelement() * layer.keys.element_size() + layer.values.nelement() * layer.values.element_size()
               for layer in cache.layers if getattr(layer, "keys", None) is not None)


def mean_norm_spread(keys: torch.Tensor) -> float:
    """Mean over heads of the coefficient of variation of key norms: how much L2 ranking can tell keys apart."""
    norms = keys.float().norm(dim=-1)  # [b, h, seq]
    return float((norms.std(-1) / norms.mean(-1).clamp_min(1e-12)).mean())


def _find_cache(args: tuple, kwargs: dict) -> Cache | None:
    return next((v for v in (*args, *kwargs.values()) if isinstance(v, Cache)), None)


def _layer_mask(valid: torch.Tensor, q: int, like: torch.Tensor | None) -> torch.Tensor:
    """4-D mask ``[b, 1, q, K]`` from slot validity ``[b, K]``: the last ``q`` slots are causal among themselves."""
    batch, length = valid.shape
    allowed = valid[:, None, None, :].expand(batch, 1, q, length).clone()
    allowed[..., length - q:] &= torch.ones(q, q, dtype=torch.bool, device=valid.device).tril()
    if like is None or like.dtype == torch.bool:
        return allowed
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    return torch.where(allowed.to(like.device), zero, torch.finfo(like.dtype).min)


class KVCompressor:
    """State of one ``with press(lm)`` context; read ``kv_bytes`` / ``kv_bytes_uncompressed`` after a call."""

    def __init__(self, model: torch.nn.Module, info: ModelInfo, press: Press, observed: dict[int, Any] | None = None):
        press.check(model, info)
        self.press = press
        self.skip_layers = frozenset(press.skip_layers)
        self.hooks = Hooks((model, info))
        for layer in range(info.n_layers):
            self.hooks.intercept(Site(layer, "attn"), self._interceptor(layer))
        self._prompt: dict[int, tuple[int, torch.Tensor]] = {}  # layer -> (prompt length, slot validity)
        self._observed: dict[int, Any] = dict(observed or {})  # layer -> what the press kept of the prompt pass
        self._bytes: dict[int, tuple[int, int]] = {}  # layer -> (before, after)

    @property
    def observed(self) -> dict[int, Any]:
        """What the press kept of the last prompt pass, per layer (hand it to another press of the same kind)."""
        return dict(self._observed)

    @property
    def kv_bytes(self) -> int:
        """Bytes the last prompt's cache held once pruned (every layer, skipped and sliding ones included)."""
        return sum(after for _, after in self._bytes.values())

    @property
    def kv_bytes_uncompressed(self) -> int:
        """Bytes the same cache held before pruning."""
        return sum(before for before, _ in self._bytes.values())

    def _interceptor(self, layer: int):
        def intercept(module: torch.nn.Module, args: tuple, kwargs: dict) -> dict | None:
            if self.hooks.is_prompt_pass:
                self._prompt.pop(layer, None)
                self._bytes.pop(layer, None)
                self._observed[layer] = self.press.observe(module, args, kwargs)
                return None
            cache = _find_cache(args, kwargs)
            if cache is None or layer >= len(cache.layers) or not isinstance(cache.layers[layer], DynamicLayer):
                return None
            cache_layer = cache.layers[layer]
            if layer not in self._prompt:
                self._prompt[layer] = self._prune(cache_layer, layer)
            if cache_layer.is_sliding:
                return None
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            return self._with_mask(kwargs, layer, hidden.shape[1], cache_layer.get_seq_length(), hidden.device)

        return intercept

    def _prompt_mask(self, batch: int, length: int, device) -> torch.Tensor:
        mask = self.hooks.attention_mask
        if mask is None:
            return torch.ones(batch, length, dtype=torch.bool, device=device)
        return mask[:, :length].to(device).bool()

    def _prune(self, cache_layer: DynamicLayer, layer: int) -> tuple[int, torch.Tensor]:
        keys, values = cache_layer.keys, cache_layer.values
        before = keys.nbytes + values.nbytes
        batch, heads, length, dim = keys.shape
        prompt_mask = self._prompt_mask(batch, length, keys.device)
        press = self.press
        first = press.first_counts(batch).to(keys.device)
        keep = keep_counts(prompt_mask.sum(-1), press.ratio, press.min_length, press.keep_last, first)
        # a sliding layer's columns are the window's, not the prompt's: it is never pruned
        if cache_layer.is_sliding or layer in self.skip_layers or int(keep.max()) == length:
            self._bytes[layer] = (before, before)
            return length, prompt_mask
        scores = press.scores(keys, prompt_mask, self._observed.get(layer))
        index, valid = select_positions(scores, prompt_mask, keep, press.keep_last, first)
        gather = index[..., None].expand(-1, -1, -1, dim)
        cache_layer.keys = keys.gather(2, gather)
        cache_layer.values = values.gather(2, gather)
        self._bytes[layer] = (before, cache_layer.keys.nbytes + cache_layer.values.nbytes)
        return length, valid

    def _with_mask(self, kwargs: dict, layer: int, q: int, cached: int, device) -> dict | None:
        """This call's mask for ``layer``, whose cache holds ``cached`` slots before the call adds ``q``."""
        prompt_length, valid = self._prompt[layer]
        mask = self.hooks.attention_mask
        batch, width = valid.shape
        if mask is None:  # generate drops an all-ones mask
            later = torch.ones(batch, cached - width + q, dtype=torch.bool, device=device)
        else:
            later = mask[:, prompt_length:].to(device).bool()  # tokens generated since, and this call's
        slots = torch.cat([valid.to(device), later], dim=-1)
        incoming = kwargs.get("attention_mask")
        if incoming is None and q == 1 and bool(slots.all()):
            return None  # sdpa without a mask is exact here, and fastest
        return {**kwargs, "attention_mask": _layer_mask(slots, q, incoming)}

