"""Train TopK / BatchTopK SAEs on streamed activations.

The trainer never holds the corpus: it reads ``[n, d]`` batches from any re-iterable
source (an :class:`~sparekit.activations.ActivationStore` site, or
:class:`TensorSource` in tests). Inputs are standardised per dimension with
statistics measured on the first batches and stored in the SAE. Training follows
Gao et al. (2024): unit-norm decoder rows (gradient projected, rows renormalised
after each step), AuxK loss on dead latents, Adam with warm-up then linear decay.
Checkpoints (SAE + Adam state in safetensors, counters in JSON) let ``fit`` resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from sparekit.errors import SparekitError
from sparekit.sae.base import REGISTRY, SAE, sae_class
from sparekit.utils.env import seed_everything
from sparekit.utils.io import atomic_path, atomic_write_json, read_json
from sparekit.utils.params import Params
from sparekit.utils.rundir import check_same_config

BatchStream = Callable[[int], Iterator[torch.Tensor]]  # epoch -> batches of [n, d_in]


class TensorSource:
    """An in-memory activation source (tests, small experiments): seeded shuffled batches."""

    def __init__(self, data: torch.Tensor, batch_size: int = 1024, seed: int = 0):
        self.data, self.batch_size, self.seed = data, batch_size, seed

    def __len__(self) -> int:
        return self.data.shape[0]

    def __call__(self, epoch: int) -> Iterator[torch.Tensor]:
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(self.seed + epoch))
        yield from self.data[order].split(self.batch_size)


class StoreSource:
    """One site of an :class:`~sparekit.activations.ActivationStore` as a seeded, re-shuffled stream."""

    def __init__(self, store, site, batch_size: int = 1024, seed: int = 0):
        self.store, self.site, self.batch_size, self.seed = store, site, batch_size, seed

    def __len__(self) -> int:
        return len(self.store)

    def __call__(self, epoch: int) -> Iterator[torch.Tensor]:
        return self.store.iter_batches(self.site, self.batch_size, shuffle=True, seed=self.seed + epoch)


class TopKTrainer(Params):
    """Fit a TopK (or BatchTopK) SAE; the result is ``sae_``, the per-step log ``history_``.

    ``lr=None`` uses 2e-4 / sqrt(d_sae / 2**14) (the sparsify scaling rule).
    ``dead_tokens``: a latent that has not fired for this many tokens is dead and
    receives the AuxK loss (``aux_k`` largest dead pre-activations reconstruct the residual).
    ``outlier_ratio``: rows whose norm exceeds this multiple of the median norm (attention-sink
    tokens; on Gemma 3 a handful per 10k tokens, up to 20x the median) and non-finite rows
    (float16 overflow in a store) are skipped; ``skipped_rows_`` counts them.
    """

    def __init__(self, d_sae: int = 4096, k: int = 32, architecture: str = "topk", lr: float | None = None,
                 epochs: float = 1.0, warmup_fraction: float = 0.05, decay_fraction: float = 0.2,
                 aux_k: int | None = None, aux_coef: float = 1 / 32, dead_tokens: int = 100_000,
                 stats_tokens: int = 65_536, outlier_ratio: float = 10.0, seed: int = 0, device: str | None = None,
                 checkpoint_dir: str | Path | None = None, checkpoint_every: int = 200, progress: bool = True):
        self.d_sae, self.k, self.architecture, self.lr = d_sae, k, architecture, lr
        self.epochs, self.warmup_fraction, self.decay_fraction = epochs, warmup_fraction, decay_fraction
        self.aux_k, self.aux_coef, self.dead_tokens, self.stats_tokens = aux_k, aux_coef, dead_tokens, stats_tokens
        self.outlier_ratio = outlier_ratio
        self.seed, self.device = seed, device
        self.checkpoint_dir, self.checkpoint_every, self.progress = checkpoint_dir, checkpoint_every, progress

    # -- public ---------------------------------------------------------------------
    def fit(self, source: BatchStream, hook_layer: int | None = None, hook_component: str = "resid") -> TopKTrainer:
        """Train on ``source`` (``source(epoch)`` yields ``[n, d_in]`` batches; ``len(source)`` = tokens per epoch)."""
        self._validate()
        seed_everything(self.seed)
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        first = next(iter(source(0)), None)
        if first is None or first.ndim != 2:
            raise SparekitError("the activation source is empty or not [n, d]")
        d_in, batch = first.shape[1], first.shape[0]
        if self.k >= self.d_sae:
            raise SparekitError(f"k={self.k} must be smaller than d_sae={self.d_sae}")
        sae = sae_class(self.architecture)(d_in, self.d_sae, k=self.k, hook_layer=hook_layer,
                                           hook_component=hook_component).to(device)
        self._init_weights(sae, source, device)
        lr = self.lr or 2e-4 / math.sqrt(self.d_sae / 2**14)
        optimizer = torch.optim.Adam(sae.parameters(), lr=lr, fused=True)
        total = max(1, int(self.epochs * len(source) / batch))
        warmup, decay_start = int(self.warmup_fraction * total), int((1 - self.decay_fraction) * total)

        def lr_at(step: int) -> float:
            return lr * min((step + 1) / max(warmup, 1), 1.0, (total - step) / max(total - decay_start, 1))

        state = {"step": 0, "tokens": 0, "skipped": 0}
        last_fired = torch.zeros(self.d_sae, dtype=torch.long, device=device)
        if self._checkpoint_exists():
            state, last_fired = self._load_checkpoint(sae, optimizer, device)
        self.history_: list[dict] = state.pop("history", [])
        bar = tqdm(total=total, initial=state["step"], desc=f"sae L{hook_layer}", unit="step",
                   disable=not self.progress)
        for x in self._batches(source, state["step"], total):
            x = x.to(device, torch.float32)
            keep = self._inliers(x)
            state["skipped"] += int((~keep).sum())
            x = x[keep]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(state["step"])
            stats = self._step(sae, optimizer, x, state["tokens"], last_fired)
            state["step"] += 1
            state["tokens"] += x.shape[0]
            self.history_.append({"step": state["step"], **stats})
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", fvu=f"{stats['fvu']:.4f}", l0=f"{stats['l0']:.1f}",
                            dead=f"{stats['dead']:.3f}")
            if self.checkpoint_dir and state["step"] % self.checkpoint_every == 0:
                self._save_checkpoint(sae, optimizer, state, last_fired)
        bar.close()
        if self.checkpoint_dir:
            self._save_checkpoint(sae, optimizer, state, last_fired)
        self.tokens_seen_, self.skipped_rows_ = state["tokens"], state["skipped"]
        self.dead_fraction_ = float(((state["tokens"] - last_fired) > self.dead_tokens).float().mean())
        self.sae_ = sae.eval()
        return self

    # -- internals --------------------------------------------------------------------
    def _validate(self) -> None:
        trainable = sorted(name for name, cls in REGISTRY.items() if cls.trainable)
        if self.architecture not in trainable:
            raise SparekitError(f"the trainer fits {' or '.join(trainable)} SAEs, not {self.architecture!r}")
        if self.k < 1 or self.d_sae < 2 or self.epochs <= 0:
            raise SparekitError("need k >= 1, d_sae >= 2 and epochs > 0")

    def _batches(self, source: BatchStream, skip: int, total: int) -> Iterator[torch.Tensor]:
        """Deterministic batch order over epochs; ``skip`` batches are passed over on resume."""
        step, epoch = 0, 0
        while step < total:
            for x in source(epoch):
                if step >= total:
                    return
                if step >= skip:
                    yield x
                step += 1
            epoch += 1

    def _init_weights(self, sae: SAE, source: BatchStream, device: torch.device) -> None:
        """Standardisation stats from the first ``stats_tokens`` rows; decoder rows start at random
        standardised data rows (plus noise), which converges much faster than random directions
        on short CPU budgets; W_enc = W_dec^T."""
        first = next(iter(source(0))).to(device, torch.float32)
        norms = first.norm(dim=1)
        self.median_norm_ = float(norms[torch.isfinite(norms)].median())
        count, total, total_sq, sample = 0, 0.0, 0.0, []
        for x in source(0):
            x = x.to(device, torch.float32)
            x = x[self._inliers(x)]
            sample.append(x)
            x = x.double()
            count, total, total_sq = count + x.shape[0], total + x.sum(0), total_sq + (x * x).sum(0)
            if count >= self.stats_tokens:
                break
        mean = total / count
        std = (total_sq / count - mean * mean).clamp(min=0).sqrt()
        with torch.no_grad():
            sae.input_mean.copy_(mean.float())
            sae.input_scale.copy_(std.clamp(min=1e-6 * float(std.max()) + 1e-12).float())
            generator = torch.Generator(device="cpu").manual_seed(self.seed)
            W = torch.randn(sae.d_sae, sae.d_in, generator=generator).to(device) / math.sqrt(sae.d_in)
            rows = sae.normalize(torch.cat(sample))
            picked = torch.randperm(rows.shape[0], generator=generator)[:sae.d_sae].to(device)
            data = F.normalize(rows[picked], dim=1)
            W[:data.shape[0]] += data
            sae.W_dec.copy_(F.normalize(W, dim=1))
            sae.W_enc.copy_(sae.W_dec.T)

    def _inliers(self, x: torch.Tensor) -> torch.Tensor:
        norms = x.norm(dim=1)
        return torch.isfinite(norms) & (norms <= self.outlier_ratio * self.median_norm_)

    def _step(self, sae: SAE, optimizer: torch.optim.Optimizer, h: torch.Tensor, tokens: int,
              last_fired: torch.Tensor) -> dict:
        fvu, residual, fired = sae.reconstruction_loss(h)
        last_fired[fired.any(0)] = tokens + h.shape[0]
        dead = (tokens - last_fired) > self.dead_tokens
        loss = fvu
        if dead.any():
            loss = loss + self._aux_loss(sae, sae.normalize(h), residual.detach(), dead.nonzero().squeeze(1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W, grad = sae.W_dec, sae.W_dec.grad
            grad -= (grad * W).sum(1, keepdim=True) * W  # keep the step tangent to the unit sphere
        optimizer.step()
        with torch.no_grad():
            sae.W_dec.copy_(F.normalize(sae.W_dec, dim=1))
        return {"loss": float(loss.detach()), "fvu": float(fvu.detach()), "l0": float(fired.sum(1).float().mean()),
                "dead": float(dead.float().mean())}

    def _aux_loss(self, sae: SAE, x: torch.Tensor, target: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """AuxK: the largest dead-latent activations must explain what the live ones missed."""
        half = sae.d_in // 2
        aux_k = min(self.aux_k or half, dead.numel())
        pre = torch.relu(x @ sae.W_enc[:, dead] + sae.b_enc[dead])
        values, local = pre.topk(aux_k, dim=-1, sorted=False)
        e_hat = F.embedding_bag(dead[local], sae.W_dec, per_sample_weights=values, mode="sum")
        aux = (e_hat - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()
        return self.aux_coef * min(aux_k / half, 1.0) * aux

    # -- checkpoints ------------------------------------------------------------------
    def _paths(self) -> tuple[Path, Path]:
        folder = Path(self.checkpoint_dir)
        return folder / "checkpoint.safetensors", folder / "checkpoint.json"

    def _checkpoint_exists(self) -> bool:
        return bool(self.checkpoint_dir) and all(p.is_file() for p in self._paths())

    def _save_checkpoint(self, sae, optimizer, state: dict, last_fired: torch.Tensor) -> None:
        tensors = {f"sae.{k}": v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
        tensors["last_fired"] = last_fired.cpu()
        names = dict(sae.named_parameters())
        for name, param in names.items():
            for key, value in optimizer.state.get(param, {}).items():
                tensors[f"adam.{name}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        tensor_path, json_path = self._paths()
        with atomic_path(tensor_path) as tmp:
            save_file(tensors, str(tmp))
        atomic_write_json(json_path, {"kind": "sae_checkpoint", "format_version": 1, **state,
                                      "trainer": self._params(),
                                      "history": self.history_})

    def _load_checkpoint(self, sae, optimizer, device) -> tuple[dict, torch.Tensor]:
        tensor_path, json_path = self._paths()
        meta = read_json(json_path)
        check_same_config(meta.get("trainer") or {}, self._params(), f"checkpoint at {self.checkpoint_dir} was made",
                          differs="different trainer settings", hint="use a new checkpoint folder or the same settings")
        tensors = load_file(str(tensor_path), device=str(device))
        sae.load_state_dict({k.removeprefix("sae."): v for k, v in tensors.items() if k.startswith("sae.")})
        for name, param in sae.named_parameters():
            if f"adam.{name}.step" in tensors:
                # fused Adam keeps its step counter on the parameter's device
                optimizer.state[param] = {"step": tensors[f"adam.{name}.step"],
                                          "exp_avg": tensors[f"adam.{name}.exp_avg"],
                                          "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"]}
        return ({"step": meta["step"], "tokens": meta["tokens"], "skipped": meta["skipped"], "history": meta["history"]},
                tensors["last_fired"])

    def _params(self) -> dict:
        skip = {"checkpoint_dir", "checkpoint_every", "progress", "device"}
        return {k: v for k, v in self.get_params().items() if k not in skip}
