"""One hook mechanism for everything that reads or edits a model's activations.

Capture, probes, SAE splicing and every steering method go through :class:`Hooks`::

    from sparekit.hooks import Hooks, Site

    with Hooks(lm) as hooks:
        hooks.capture(Site(6))                                  # residual stream after block 6
        hooks.edit(Site(8, "mlp"), lambda h: h * 0, positions="last")
        hooks.stop_after_captures()                             # skip upper layers and LM head
        lm.model(**batch)
    h6 = hooks[Site(6)]                                         # [batch, d_model] at the last prompt token

Sites are a layer index plus a component: ``resid`` (output of decoder block L, =
``output_hidden_states[L + 1]``), ``attn`` (the attention module's output),
``mlp`` (the MLP module's output) or ``heads`` (the *input* of the attention output
projection: the heads' outputs side by side, ``[..., n_heads * head_dim]``, before they are mixed). Positions are ``"last"`` (the last real prompt
token, correct under left *and* right padding), ``"all"``, or an int index.
Under ``generate`` with a KV cache, ``when="prompt"`` acts on the prompt pass only
and ``when="always"`` on every decoding step as well (where ``"last"`` is the new token).

``intercept(site, fn)`` lets ``fn`` rewrite the keyword arguments a module is called
with (inputs that are not activations, such as the attention mask; :mod:`sparekit.kv`
uses it to prune the KV cache). Hooks are registered in ``__enter__`` and always removed on exit, even after an
error. A decoder layer may return a tensor (transformers 5) or a tuple (older
versions, attention modules): both are handled here and nowhere else.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers.cache_utils import Cache

from sparekit.errors import SparekitError
from sparekit.hooks.site import _COMPONENT_ORDER, Site
from sparekit.models.architecture import ModelInfo
from sparekit.models.loading import LoadedModel

Positions = Literal["last", "all"] | int
When = Literal["prompt", "always"]
EditFn = Callable[[torch.Tensor], torch.Tensor]
#: the batch rows an edit applies to: indices or a boolean mask, or a function returning them when the edit
#: runs (a decision made per batch, e.g. a gate's); ``None`` (also as the function's answer) means every row
Rows = Sequence[int] | torch.Tensor | Callable[[], "torch.Tensor | Sequence[int] | None"] | None
# (module, positional args, keyword args) -> new keyword args, or None to leave them as they are
InterceptFn = Callable[[torch.nn.Module, tuple, dict], dict | None]

def site_table(info: ModelInfo) -> list[dict[str, object]]:
    """Every hookable site of a model in execution order: its name, HF module path and aliases."""
    return [{"site": str(site), "module": info.module_path(site.layer, site.component), "aliases": list(site.aliases)}
            for site in sorted((Site(layer, c) for layer in range(info.n_layers) for c in _COMPONENT_ORDER),
                               key=lambda s: s.depth)]


class StopForward(Exception):
    """Raised inside a hook to end the forward pass once every needed site has run."""


@dataclass
class _Action:
    site: Site
    positions: Positions
    when: When
    edit: EditFn | None = None
    dtype: torch.dtype | None = None
    rows: Rows = None
    values: list[torch.Tensor] = field(default_factory=list)


def _selected_rows(rows: Rows, batch: int, device) -> torch.Tensor | None:
    """Row indices an edit applies to in a batch of ``batch`` rows (``None``: every row)."""
    if callable(rows):
        rows = rows()
    if rows is None:
        return None
    rows = torch.as_tensor(rows, device=device)
    if rows.dtype == torch.bool:
        if rows.shape != (batch,):
            raise SparekitError(f"an edit's row mask has {rows.numel()} rows but the batch has {batch}",
                                "decide the rows for the batch that is running")
        return rows.nonzero().flatten()
    if rows.numel() and not (0 <= int(rows.min()) and int(rows.max()) < batch):
        raise SparekitError(f"an edit names rows {rows.tolist()} of a batch of {batch}", "give rows inside the batch")
    return rows.long()


def last_token_index(attention_mask: torch.Tensor | None, batch: int, seq_len: int, device) -> torch.Tensor:
    """Index of each row's last real token, for left or right padding."""
    if attention_mask is None or attention_mask.shape[-1] != seq_len:
        return torch.full((batch,), seq_len - 1, dtype=torch.long, device=device)
    mask = attention_mask.to(device).bool()
    flipped_first_real = mask.flip(-1).int().argmax(-1)
    return seq_len - 1 - flipped_first_real


#: attribute of a KV cache that holds a reused prompt prefix: how many tokens it held before the prompt pass
_PROMPT_START = "sparekit_prompt_start"


def mark_prompt_start(cache: Cache, length: int) -> None:
    """Declare that ``cache`` holds a reused prefix of the prompt (``length`` tokens), so the call that
    feeds the rest of the prompt still counts as the prompt pass (the server's prefix caching)."""
    setattr(cache, _PROMPT_START, length)


def is_prompt_pass(args: tuple, kwargs: dict) -> bool:
    """Whether a model call is a prompt pass: no KV cache, an empty one, or one holding only a reused
    prompt prefix (:func:`mark_prompt_start`).

    The cache is found by its type, not by its keyword: ``generate`` passes it as
    ``past_key_values`` up to transformers 5.23 and as ``cache`` from 5.24 on. This is
    the one place sparekit decides "prompt pass" (``when="prompt"`` edits and captures).
    """
    for value in (*args, *kwargs.values()):
        if isinstance(value, Cache):
            return value.get_seq_length() == getattr(value, _PROMPT_START, 0)
    return True


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword a model's forward takes its KV cache by (``cache`` from transformers 5.24 on)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def last_logits_only(model: torch.nn.Module) -> dict[str, int]:
    """Forward keywords that run the LM head on the last position only, where the model allows it: a 262k-token
    vocabulary makes the head on every position the costliest part of a prompt pass that reads one next token."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _split_output(output) -> tuple[torch.Tensor, Callable[[torch.Tensor], object]]:
    """Return the hidden-state tensor of a module output and a function rebuilding it."""
    if isinstance(output, torch.Tensor):
        return output, lambda hidden: hidden
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0], lambda hidden: (hidden, *output[1:])
    raise TypeError(f"cannot hook a module returning {type(output).__name__}")


def _pre_hook(fn: InterceptFn):
    def hook(module, args, kwargs):
        new_kwargs = fn(module, args, kwargs)
        return None if new_kwargs is None else (args, new_kwargs)

    return hook


class Hooks:
    """Context manager that captures and edits activations at :class:`Site` s."""

    def __init__(self, lm: LoadedModel | tuple[torch.nn.Module, ModelInfo]):
        self.model, self.info = (lm.model, lm.info) if isinstance(lm, LoadedModel) else lm
        self._actions: list[_Action] = []
        self._stop_site: Site | None = None
        self._intercepts: list[tuple[Site, InterceptFn]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._is_prompt_pass = True
        self._attention_mask: torch.Tensor | None = None
        self._index_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._active = False

    # -- declaring what to do -------------------------------------------------
    def capture(
        self, site: Site, positions: Positions = "last", when: When = "prompt", dtype: torch.dtype | None = None
    ) -> Hooks:
        """Record the activation at ``site``; read it back with ``hooks[site]``."""
        self._add(_Action(self._checked(site), positions, when, dtype=dtype))
        return self

    def edit(self, site: Site, fn: EditFn, positions: Positions = "last", when: When = "prompt",
             rows: Rows = None) -> Hooks:
        """Replace the activation at ``site`` by ``fn(activation)`` at ``positions`` of ``rows``.

        ``fn`` gets ``[rows, d]`` for a single position per row and ``[rows, seq, d]``
        for ``"all"``, and returns a tensor of the same shape. ``rows`` scopes the edit to
        some rows of the batch (see :data:`Rows`): a server mixes requests, a gate steers
        the prompts it flags; the other rows keep their activation exactly.
        """
        self._add(_Action(self._checked(site), positions, when, edit=fn, rows=rows))
        return self

    def intercept(self, site: Site, fn: InterceptFn) -> Hooks:
        """Call ``fn(module, args, kwargs)`` before the module at ``site`` runs, on every call.

        A dict returned replaces the module's keyword arguments; ``None`` leaves them.
        ``fn`` can read :attr:`is_prompt_pass` and :attr:`attention_mask` of the current model call.
        """
        if self._active:
            raise RuntimeError("declare intercepts before entering the Hooks context")
        self._intercepts.append((self._checked(site), fn))
        return self

    @property
    def is_prompt_pass(self) -> bool:
        """Whether the model call in progress is a prompt pass (see :func:`is_prompt_pass`)."""
        return self._is_prompt_pass

    @property
    def attention_mask(self) -> torch.Tensor | None:
        """The 2-D attention mask the model call in progress was given (``None`` if none)."""
        return self._attention_mask

    def stop_after(self, site: Site) -> Hooks:
        """End the forward pass right after ``site`` has run (the call then returns nothing)."""
        self._stop_site = self._checked(site)
        return self

    def stop_after_captures(self) -> Hooks:
        """Stop after the deepest captured site: capture never pays for the upper layers."""
        sites = [a.site for a in self._actions if a.edit is None]
        if not sites:
            raise SparekitError("stop_after_captures() needs at least one capture")
        return self.stop_after(max(sites, key=lambda s: s.depth))

    # -- reading results ------------------------------------------------------
    def __getitem__(self, site: Site) -> torch.Tensor:
        """The most recent captured activation at ``site``."""
        return self.all(site)[-1]

    def all(self, site: Site) -> list[torch.Tensor]:
        """Every captured activation at ``site`` (one per matching forward call)."""
        values = [v for a in self._actions if a.edit is None and a.site == site for v in a.values]
        if not values:
            raise KeyError(f"nothing captured at {site}: was it declared with capture() and did the forward reach it?")
        return values

    # -- context protocol ------------------------------------------------------
    def __enter__(self) -> Hooks:
        if self._active:
            raise RuntimeError("Hooks context is already active")
        self._active = True
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True))
            for action in self._actions:
                module = self.model.get_submodule(self.info.module_path(action.site.layer, action.site.component))
                if action.site.component == "heads":  # the projection's input: a pre-hook
                    self._handles.append(module.register_forward_pre_hook(self._make_pre_hook(action)))
                else:
                    self._handles.append(module.register_forward_hook(self._make_hook(action)))
            for site, fn in self._intercepts:
                module = self.model.get_submodule(self.info.module_path(site.layer, site.component))
                self._handles.append(module.register_forward_pre_hook(_pre_hook(fn), with_kwargs=True))
            if self._stop_site is not None:
                module = self.model.get_submodule(self.info.module_path(self._stop_site.layer, self._stop_site.component))
                self._handles.append(module.register_forward_hook(self._raise_stop))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove()
        return exc_type is StopForward

    # -- internals --------------------------------------------------------------
    def _checked(self, site: Site) -> Site:
        if not isinstance(site, Site):
            raise TypeError(f"expected a Site, got {type(site).__name__}")
        self.info.check_layer(site.layer)
        return site

    def _add(self, action: _Action) -> None:
        if self._active:
            raise RuntimeError("declare captures and edits before entering the Hooks context")
        if action.positions not in ("last", "all") and not isinstance(action.positions, int):
            raise SparekitError(f"bad positions {action.positions!r}", "use 'last', 'all' or an int index")
        self._actions.append(action)

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._active = False

    def _on_model_call(self, module, args, kwargs) -> None:
        self._is_prompt_pass = is_prompt_pass(args, kwargs)
        self._attention_mask = kwargs.get("attention_mask")
        self._index_cache = {}  # (row, column) indices are computed once per model call, not once per hook

    def _raise_stop(self, module, args, output) -> None:
        raise StopForward

    def _indices(self, hidden: torch.Tensor, positions: Positions) -> tuple[torch.Tensor, torch.Tensor]:
        """The (row, column) index of each row's selected position, shared by every hook of one model call."""
        batch, seq_len = hidden.shape[0], hidden.shape[1]
        key = (positions, batch, seq_len, hidden.device)
        if key not in self._index_cache:
            if positions == "last":
                cols = last_token_index(self._attention_mask, batch, seq_len, hidden.device)
            else:
                index = positions if positions >= 0 else seq_len + positions
                if not 0 <= index < seq_len:
                    raise SparekitError(f"position {positions} is outside a sequence of length {seq_len}")
                cols = torch.full((batch,), index, dtype=torch.long, device=hidden.device)
            self._index_cache[key] = (torch.arange(batch, device=hidden.device), cols)
        return self._index_cache[key]

    def _apply(self, action: _Action, hidden: torch.Tensor) -> torch.Tensor | None:
        """Capture (returns ``None``) or edit (returns the new tensor) one activation ``[batch, seq, d]``."""
        if action.when == "prompt" and not self._is_prompt_pass:
            return None
        if action.edit is None:
            if action.positions == "all":
                action.values.append(hidden.detach().to(action.dtype or hidden.dtype))
            else:
                rows, cols = self._indices(hidden, action.positions)
                action.values.append(hidden[rows, cols].detach().to(action.dtype or hidden.dtype))
            return None
        selected = _selected_rows(action.rows, hidden.shape[0], hidden.device)
        if selected is not None and selected.numel() == 0:
            return None
        if action.positions == "all":
            if selected is None:
                return action.edit(hidden).to(hidden.dtype)
            edited = hidden.clone()
            edited[selected] = action.edit(hidden[selected]).to(hidden.dtype)
            return edited
        rows, cols = self._indices(hidden, action.positions)
        if selected is not None:
            rows, cols = rows[selected], cols[selected]
        edited = hidden.clone()
        edited[rows, cols] = action.edit(hidden[rows, cols]).to(hidden.dtype)
        return edited

    def _make_hook(self, action: _Action):
        def hook(module, args, output):
            hidden, rebuild = _split_output(output)
            new = self._apply(action, hidden)
            return None if new is None else rebuild(new)

        return hook

    def _make_pre_hook(self, action: _Action):
        def hook(module, args):
            new = self._apply(action, args[0])
            return None if new is None else (new, *args[1:])

        return hook
