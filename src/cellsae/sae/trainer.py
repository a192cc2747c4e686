"""Training SAEs: one recipe shared by every architecture, and sweeps sharing each batch.

The recipe: standardise inputs (mean-centre, scale so ``E‖x‖ = √d_in``; both folded into
the weights at the end), unit-norm decoder rows kept by projecting the gradient and
renormalising after each step, encoder initialised as the decoder transpose, dead latents
tracked over a window of samples and revived by an AuxK loss, Adam with warm-up and decay
and a learning rate scaled with width. Checkpoints hold everything needed to resume
exactly: weights, optimiser moments, counters, and the position in the data stream.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._utils import progress as progress_bar
from .._utils import resolve_device
from . import distributed
from .base import SAE, LossContext
from .data import BatchStream, open_source, sample_rows
from .io import load_checkpoint, save_checkpoint
from .registry import PRESETS, architecture_params, make_sae

logger = logging.getLogger(__name__)

_LR_DECAYS = ("linear", "cosine", "none")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run (stored in checkpoints and in the sidecar)."""

    arch: str = "batchtopk"
    d_sae: int = 4096
    hparams: dict = dataclasses.field(default_factory=dict)
    batch_size: int = 4096
    n_steps: int = 1000
    lr: float | None = None
    lr_warmup: float = 0.05
    lr_decay: str = "linear"
    decay_start: float = 0.8
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float | None = None
    sparsity_delay: int = 0
    sparsity_warmup: float = 0.05
    aux_alpha: float = 1 / 32
    sample_weight_power: float = 0.0
    k_aux: int | None = None
    dead_window: int | None = None
    resample_every: int | None = None
    resample_scale: float = 0.2
    center: bool = True
    scale: bool = True
    decoder_bias_init: str = "mean"
    seed: int = 0
    chunk_size: int = 65_536
    buffer_chunks: int = 16
    early_stop_patience: int | None = None
    early_stop_tol: float = 1e-3
    eval_every: int = 100

    def validate(self) -> None:
        def bad(field: str, value: Any, allowed: str) -> ValueError:
            return ValueError(f"{field}={value!r} is not allowed; {allowed}")

        if self.d_sae < 1:
            raise bad("d_sae", self.d_sae, "it must be a positive integer")
        if self.batch_size < 1:
            raise bad("batch_size", self.batch_size, "it must be a positive integer")
        if self.n_steps < 1:
            raise bad("n_steps", self.n_steps, "it must be a positive integer")
        if self.lr is not None and not self.lr > 0:
            raise bad("lr", self.lr, "it must be positive")
        if not 0 <= self.lr_warmup < 1:
            raise bad("lr_warmup", self.lr_warmup, "a fraction of the steps in [0, 1)")
        if self.lr_decay not in _LR_DECAYS:
            raise bad("lr_decay", self.lr_decay, f"choose one of {_LR_DECAYS}")
        if not 0 <= self.decay_start <= 1:
            raise bad("decay_start", self.decay_start, "a fraction of the steps in [0, 1]")
        if not 0 <= self.sparsity_warmup < 1:
            raise bad("sparsity_warmup", self.sparsity_warmup, "a fraction in [0, 1)")
        if self.aux_alpha < 0:
            raise bad("aux_alpha", self.aux_alpha, "it must be non-negative")
        if not 0 <= self.sample_weight_power <= 4:
            raise bad("sample_weight_power", self.sample_weight_power, "a number in [0, 4] "
                      "(0: plain mean squared error, 2: each sample's error relative to its "
                      "squared norm)")
        if self.decoder_bias_init not in ("mean", "zero"):
            raise bad("decoder_bias_init", self.decoder_bias_init, "use 'mean' or 'zero'")
        if self.early_stop_patience is not None and self.early_stop_patience < 1:
            raise bad("early_stop_patience", self.early_stop_patience, "None or >= 1")
        if self.eval_every < 1:
            raise bad("eval_every", self.eval_every, "it must be a positive integer")
        if self.resample_every is not None and self.resample_every < 1:
            raise bad("resample_every", self.resample_every, "None (off) or a number of steps "
                      ">= 1")
        if not self.resample_scale > 0:
            raise bad("resample_scale", self.resample_scale, "it must be positive")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out


def default_lr(d_sae: int) -> float:
    """Adam learning rate scaled as 1/√width (Gao et al. 2024): 2e-4 at 16384 latents."""
    return 2e-4 / math.sqrt(d_sae / 16384)


@dataclass
class Normalisation:
    mean: np.ndarray
    scale: float
    data_mean: np.ndarray  # mean of the standardised sample (for b_dec init)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale,
                "data_mean": self.data_mean.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Normalisation:
        return cls(np.asarray(d["mean"], np.float32), float(d["scale"]),
                   np.asarray(d["data_mean"], np.float32))


def _normalisation(sample: np.ndarray, *, center: bool, scale: bool, l2: bool) -> Normalisation:
    x = sample.astype(np.float64)
    if l2:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    mean = x.mean(0) if center else np.zeros(x.shape[1])
    factor = 1.0
    if scale:
        norm = float(np.linalg.norm(x - mean, axis=1).mean())
        factor = norm / math.sqrt(x.shape[1]) if norm > 0 else 1.0
    data_mean = ((x - mean) / factor).mean(0)
    return Normalisation(mean.astype(np.float32), float(factor), data_mean.astype(np.float32))


class _Run:
    """One SAE being trained: model, optimiser, counters and early-stop state."""

    def __init__(self, config: TrainConfig, d_in: int, norm: Normalisation, device,
                 init_sample: np.ndarray | None, stream_samples: int) -> None:
        config.validate()
        self.config = config
        self.device = device
        self.sae = make_sae(config.arch, d_in, config.d_sae, **config.hparams)
        generator = torch.Generator().manual_seed(config.seed)
        data_mean = torch.from_numpy(norm.data_mean) if config.decoder_bias_init == "mean" \
            else None
        self.sae.reset_parameters(generator, data_mean)
        self.sae.input_mean.copy_(torch.from_numpy(norm.mean))
        self.sae.input_scale.fill_(norm.scale)
        self.sae.to(device)
        if init_sample is not None:
            x = self.sae._standardise(torch.from_numpy(init_sample).to(device))
            if hasattr(self.sae, "initialise_from_data"):  # thresholds/biases for the L0
                self.sae.initialise_from_data(x)
            # Sparse from the first step (TopK family, or a target L0): the few codes of a
            # random dictionary overshoot, so scale the encoder to fit the reconstruction.
            if self.sae.sparse_training or getattr(self.sae, "target_l0", None) is not None:
                self.sae.rescale_encoder_init(x)
        self.lr = config.lr if config.lr is not None else default_lr(config.d_sae)
        self.k_aux = config.k_aux if config.k_aux is not None else max(1, d_in // 2)
        self.dead_window = config.dead_window if config.dead_window is not None else int(
            max(10 * config.batch_size, min(1_000_000, stream_samples // 10)))
        # The fused kernel is several times faster than the default per-tensor loop on CPU.
        kwargs = dict(lr=self.lr, betas=tuple(config.betas),
                      fused=device.type in ("cpu", "cuda"))
        if config.weight_decay > 0:
            self.optimizer = torch.optim.AdamW(self.sae.parameters(),
                                               weight_decay=config.weight_decay, **kwargs)
        else:
            self.optimizer = torch.optim.Adam(self.sae.parameters(), **kwargs)
        self.samples_since_fired = torch.zeros(config.d_sae, dtype=torch.int64, device=device)
        self.n_resampled = 0
        self.step = 0
        self.finished = False
        self.history: list[dict] = []
        self.early = {"best": None, "bad": 0, "window_sum": 0.0, "window_n": 0}
        self.last: dict[str, float] = {}
        self._log_acc: dict[str, float] = {}

    # -- schedules ----------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        c = self.config
        warmup = int(c.lr_warmup * c.n_steps)
        if step < warmup:
            return self.lr * (step + 1) / warmup
        if c.lr_decay == "none":
            return self.lr
        start = warmup if c.lr_decay == "cosine" else max(warmup, int(c.decay_start * c.n_steps))
        if step < start:
            return self.lr
        progress = (step - start) / max(1, c.n_steps - start)
        if c.lr_decay == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * progress))
        return self.lr * (1 - progress)

    def sparsity_scale_at(self, step: int) -> float:
        c = self.config
        if step < c.sparsity_delay:
            return 0.0
        ramp = int(c.sparsity_warmup * c.n_steps)
        return 1.0 if ramp == 0 else min(1.0, (step - c.sparsity_delay + 1) / ramp)

    # -- one step -----------------------------------------------------------------------

    def train_step(self, x_raw: torch.Tensor, autocast: bool | str) -> None:
        sae, c = self.sae, self.config
        x = sae._standardise(x_raw)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        ctx = LossContext(sparsity_scale=self.sparsity_scale_at(self.step),
                          dead_mask=self.samples_since_fired > self.dead_window,
                          aux_alpha=c.aux_alpha, k_aux=self.k_aux,
                          sample_weight=_sample_weights(x, c.sample_weight_power))
        use_amp = autocast == "always" or (autocast is True and x.is_cuda)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = sae.training_forward(x, ctx)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        with torch.no_grad():
            w, g = sae.W_dec, sae.W_dec.grad
            if g is not None:  # keep the step tangent to the unit sphere of each row
                g -= (g * w).sum(1, keepdim=True) * w
            if c.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), c.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.samples_since_fired += x.shape[0]
            self.samples_since_fired[out.fired] = 0
            if c.resample_every and (self.step + 1) % c.resample_every == 0 and \
                    self.step + 1 < c.n_steps:
                self.resample_dead(x, out.x_hat.detach().float())
            total_var = (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
            recon = out.parts.get("recon", float("nan")) if ctx.sample_weight is None else \
                float((out.x_hat.detach().float() - x).pow(2).sum(-1).mean())
            loss = float(out.loss.detach())
        self.step += 1
        metrics = {"loss": loss, "fvu": recon / float(total_var), "l0": out.l0,
                   "dead": float((self.samples_since_fired > self.dead_window).float().mean()),
                   **{k: v for k, v in out.parts.items() if k != "recon"}}
        self.last = metrics
        for key, value in metrics.items():
            self._log_acc[key] = self._log_acc.get(key, 0.0) + value
        self._log_acc["_n"] = self._log_acc.get("_n", 0.0) + 1
        self._early_stop_update(loss)

    @torch.no_grad()
    def resample_dead(self, x: torch.Tensor, x_hat: torch.Tensor) -> int:
        """Re-initialise dead latents towards inputs that are badly reconstructed.

        The resampling of Bricken et al. (2023): each dead latent gets the normalised
        residual ``x - x̂`` of a batch sample drawn with probability ∝ ‖x - x̂‖² as its
        decoder row, the same direction scaled to ``resample_scale`` × the mean norm of
        the alive encoder rows as its encoder row, zero biases, and fresh Adam moments.
        The draw is seeded by (seed, step), so resuming stays exact. Returns the number
        of latents resampled.
        """
        sae = self.sae
        dead = (self.samples_since_fired > self.dead_window).nonzero().squeeze(1)
        if dead.numel() == 0:
            return 0
        residual = x - x_hat
        err = residual.pow(2).sum(1)
        if not float(err.sum()) > 0:
            return 0
        gen = torch.Generator(device="cpu").manual_seed(
            self.config.seed * 1_000_003 + self.step)
        pick = torch.multinomial(err.cpu(), dead.numel(), replacement=True,
                                 generator=gen).to(x.device)
        direction = residual[pick]
        direction /= direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = torch.ones(sae.d_sae, dtype=torch.bool, device=x.device)
        alive[dead] = False
        enc_norm = sae.W_enc[alive].norm(dim=1).mean() if alive.any() else \
            sae.W_enc.norm(dim=1).mean()
        sae.W_dec[dead] = direction
        sae.W_enc[dead] = direction * (self.config.resample_scale * enc_norm)
        for name, param in sae.named_parameters():
            if name == "b_dec" or param.ndim == 0 or param.shape[0] != sae.d_sae:
                continue
            if name.startswith("b_"):
                param[dead] = 0.0
            for moment in self.optimizer.state.get(param, {}).values():
                if torch.is_tensor(moment) and moment.ndim and moment.shape[0] == sae.d_sae:
                    moment[dead] = 0.0
        self.samples_since_fired[dead] = 0
        self.n_resampled += int(dead.numel())
        logger.info("step %d: resampled %d dead latents", self.step + 1, dead.numel())
        return int(dead.numel())

    def flush_history(self) -> None:
        n = self._log_acc.pop("_n", 0.0)
        if n:
            entry = {"step": self.step, "lr": self.lr_at(self.step - 1)}
            entry.update({k: v / n for k, v in self._log_acc.items()})
            self.history.append(entry)
        self._log_acc = {}

    def _early_stop_update(self, loss: float) -> None:
        c, e = self.config, self.early
        e["window_sum"] += loss
        e["window_n"] += 1
        if self.step >= c.n_steps:
            self.finished = True
        if e["window_n"] < c.eval_every:
            return
        mean = e["window_sum"] / e["window_n"]
        e["window_sum"], e["window_n"] = 0.0, 0
        if e["best"] is None or mean < e["best"] * (1 - c.early_stop_tol):
            e["best"], e["bad"] = mean, 0
        else:
            e["bad"] += 1
        if c.early_stop_patience is not None and e["bad"] >= c.early_stop_patience:
            logger.info("%s: loss plateaued at step %d (best %.4g); stopping early",
                        c.arch, self.step, e["best"])
            self.finished = True

    # -- state --------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in self.sae.state_dict().items()}
        names = {id(p): n for n, p in self.sae.named_parameters()}
        for p, state in self.optimizer.state.items():
            for key, value in state.items():
                tensors[f"optim.{names[id(p)]}.{key}"] = torch.as_tensor(value)
        tensors["samples_since_fired"] = self.samples_since_fired
        return tensors

    def state_json(self) -> dict:
        return {"step": self.step, "finished": self.finished, "history": self.history,
                "early": self.early, "log_acc": self._log_acc,
                "n_resampled": self.n_resampled}

    def load_state(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.sae.load_state_dict(model, strict=True)
        params = dict(self.sae.named_parameters())
        opt_state: dict[int, dict] = {}
        index = {n: i for i, (n, _) in enumerate(self.sae.named_parameters())}
        for key, value in tensors.items():
            if key.startswith("optim."):
                name, field = key[len("optim."):].rsplit(".", 1)
                opt_state.setdefault(index[name], {})[field] = value.to(
                    params[name].device if field != "step" else "cpu")
        sd = self.optimizer.state_dict()
        sd["state"] = opt_state
        self.optimizer.load_state_dict(sd)
        self.samples_since_fired = tensors["samples_since_fired"].to(self.device)
        self.step = int(state["step"])
        self.finished = bool(state["finished"])
        self.history = list(state["history"])
        self.early = dict(state["early"])
        self._log_acc = dict(state.get("log_acc", {}))
        self.n_resampled = int(state.get("n_resampled", 0))

    def result(self, norm: Normalisation, extra: dict) -> SAE:
        sae = copy.deepcopy(self.sae).cpu().eval()
        sae.fold_normalisation()
        dead = float((self.samples_since_fired > self.dead_window).float().mean())
        sae.train_info = {
            "config": self.config.to_dict(), "steps": self.step,
            "samples_seen": self.step * self.config.batch_size,
            "normalisation": {"mean_norm": float(np.linalg.norm(norm.mean)),
                              "scale": norm.scale},
            "final": {**self.last, "dead": dead}, "dead_window": self.dead_window,
            "n_resampled": self.n_resampled,
            "history": self.history, **extra,
        }
        return sae


def _sample_weights(x: torch.Tensor, power: float) -> torch.Tensor | None:
    """Per-sample weights ∝ ‖x_i‖^-power of the reconstruction loss, mean 1 per batch.

    ``x`` is the standardised batch (mean-centred unless ``center=False``).

    With correlated features a few crowded samples (many features active at once) have
    large norms and would dominate a plain squared error; ``power = 2`` scores each
    sample's error relative to its own squared norm. Norms are floored at 5 % of the
    batch's mean norm so that near-empty inputs do not take over.
    """
    if power == 0:
        return None
    with torch.no_grad():
        norm = x.float().norm(dim=1)
        w = norm.clamp_min(0.05 * float(norm.mean()) + 1e-12).pow(-power)
        return w / w.mean()


def _resolve_steps(n_rows: int, batch_size: int, n_steps: int | None,
                   n_epochs: float | None) -> int:
    if n_steps is not None and n_epochs is not None:
        raise ValueError("give n_steps or n_epochs, not both")
    if n_steps is not None:
        return int(n_steps)
    if n_epochs is None:  # about 10 epochs of small data, capped at 20M samples
        total = max(n_rows, min(10 * n_rows, 20_000_000))
    else:
        if n_epochs <= 0:
            raise ValueError(f"n_epochs must be positive, got {n_epochs}")
        total = n_epochs * n_rows
    return max(1, int(math.ceil(total / batch_size)))


_RUN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"hparams", "arch", "d_sae"}


def _split_kwargs(arch: str, kwargs: dict) -> tuple[dict, dict]:
    """Split keyword arguments into architecture hyperparameters and recipe settings."""
    arch_names = architecture_params(arch)
    hparams, recipe = {}, {}
    for key, value in kwargs.items():
        if key in arch_names:
            hparams[key] = value
        elif key in _RUN_FIELDS:
            recipe[key] = value
        else:
            raise ValueError(f"unknown option {key!r} for arch={arch!r}: it is neither a "
                             f"training setting ({sorted(_RUN_FIELDS)}) nor a hyperparameter "
                             f"of this architecture ({sorted(arch_names)})")
    return hparams, recipe


def _build_config(arch: str, d_sae: int | None, k: int | None, preset: str | None,
                  kwargs: dict, n_rows: int, n_steps, n_epochs) -> TrainConfig:
    settings: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        settings.update(PRESETS[preset])
    if arch is not None:
        settings["arch"] = arch
    if d_sae is not None:
        settings["d_sae"] = d_sae
    if k is not None:
        settings["k"] = k
    settings.update(kwargs)
    arch = settings.pop("arch", "batchtopk")
    d_sae = int(settings.pop("d_sae", 4096))
    l1_total = settings.pop("l1_total", None)  # λ averaged over latents (the paper's)
    if l1_total is not None and "l1_coeff" not in kwargs:  # an explicit l1_coeff wins
        settings["l1_coeff"] = float(l1_total) / d_sae
    if "k" in settings and "k" not in architecture_params(arch):
        # k is often passed generically (configs, sweeps); it has no meaning here
        logger.warning("k=%s is ignored: arch %r has no k (its sparsity comes from its "
                       "penalty)", settings.pop("k"), arch)
    hparams, recipe = _split_kwargs(arch, settings)
    batch_size = int(recipe.get("batch_size", TrainConfig.batch_size))
    recipe["n_steps"] = _resolve_steps(n_rows, batch_size, n_steps, n_epochs)
    if "betas" in recipe:
        recipe["betas"] = tuple(recipe["betas"])
    config = TrainConfig(arch=arch, d_sae=d_sae, hparams=hparams, **recipe)
    config.validate()
    return config


def train(
    X: Any,
    arch: str | None = None,
    d_sae: int | None = None,
    k: int | None = None,
    *,
    preset: str | None = None,
    key: str | None = None,
    n_steps: int | None = None,
    n_epochs: float | None = None,
    seed: int = 0,
    device: Any = "auto",
    autocast: bool | str = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 2,
    resume: str | Path | None = None,
    progress: bool | None = None,
    log_every: int = 25,
    **kwargs: Any,
) -> SAE:
    """Train a sparse autoencoder on the rows of ``X``.

    Parameters
    ----------
    X : (n_samples, d_in) array, memmap, zarr/h5 array, or a .npy/.zarr/.h5/.h5ad path
        Training inputs (tokens or cell embeddings), streamed in chunks.
    arch
        ``"relu"``, ``"topk"``, ``"batchtopk"`` (default), ``"jumprelu"``, ``"gated"`` or
        ``"matryoshka"`` (see :data:`cellsae.sae.ARCHITECTURES`).
    d_sae
        Number of latents (default 4096).
    k
        Active latents per sample for the TopK family.
    preset
        A named setting from :data:`cellsae.sae.PRESETS` (``"paper"``); explicit arguments
        override it.
    key
        Dataset name inside a container file (``"obsm/X_cnn"``, ``"X_cnn"`` for .h5ad).
    n_steps, n_epochs
        Training length (default about ten epochs, at most 20M samples).
    seed
        Seeds the initialisation and the data order.
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    autocast
        ``True``: bf16 autocast on CUDA (parameters, optimiser state and the values of
        the active latents stay fp32); ``"always"``: on any device, CPU included (for
        CPUs with fast bf16, and to test the path); ``False``: fp32 throughout.
    checkpoint_dir, checkpoint_every
        Write ``step_<8-digit step>.safetensors`` + ``.json`` every ``checkpoint_every`` steps
        and at the end, keeping the last ``keep_checkpoints``.
    resume
        A checkpoint file or folder (the latest checkpoint in it). Training continues with
        the checkpoint's exact state; the result equals an uninterrupted run. The other
        arguments must describe the same run.
    progress
        Show a progress bar (default: when stderr is a terminal).
    log_every
        Steps between history entries and progress-bar updates.
    **kwargs
        Architecture hyperparameters (``l1_coeff``, ``threshold_decay``, ``group_sizes``,
        ``pre_bias``, ...) and recipe settings (``batch_size`` = 4096, ``lr`` (default
        2e-4·√(16384/d_sae)), ``lr_warmup``, ``lr_decay``, ``weight_decay``, ``grad_clip``,
        ``aux_alpha`` = 1/32, ``sample_weight_power`` (0: plain squared error; 2: each
        sample's error relative to its squared norm, see ``_sample_weights``), ``k_aux``,
        ``dead_window``, ``resample_every`` (steps
        between resamplings of dead latents; off by default), ``center``, ``scale``,
        ``early_stop_patience``, ``chunk_size``, ``buffer_chunks``, ...); see
        :class:`TrainConfig`.

    Returns
    -------
    SAE
        The trained model on CPU with normalisation folded in (takes raw inputs);
        ``sae.train_info`` holds the configuration, final statistics and history.
    """
    source = open_source(X, key=key)
    config = _build_config(arch, d_sae, k, preset, {**kwargs, "seed": seed}, source.n,
                           n_steps, n_epochs)
    return _train_runs(source, [config], device=device, autocast=autocast,
                       checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                       keep_checkpoints=keep_checkpoints, resume=resume, progress=progress,
                       log_every=log_every)[0]


def train_sweep(
    X: Any,
    configs: list[dict],
    *,
    key: str | None = None,
    n_steps: int | None = None,
    n_epochs: float | None = None,
    seed: int = 0,
    device: Any = "auto",
    autocast: bool | str = True,
    progress: bool | None = None,
    log_every: int = 25,
    **shared: Any,
) -> list[SAE]:
    """Train several SAEs in one pass over the data; every batch is read once and shared.

    Parameters
    ----------
    X
        As in :func:`train`.
    configs
        One dict per SAE (``{"arch": "topk", "d_sae": 2048, "k": 16}``, ...); keys as in
        :func:`train`, overriding ``shared``.
    **shared
        Settings common to all runs. ``batch_size`` must be common.

    Returns
    -------
    list of SAE, in the order of ``configs``.
    """
    if not configs:
        raise ValueError("configs is empty; pass at least one dict of settings")
    source = open_source(X, key=key)
    built = []
    for i, cfg in enumerate(configs):
        cfg = {**shared, **cfg}
        if "seed" in cfg and cfg["seed"] != seed:
            raise ValueError(f"configs[{i}] sets seed; the sweep shares one data order, "
                             "pass seed= to train_sweep")
        cfg.pop("seed", None)
        built.append(_build_config(cfg.pop("arch", "batchtopk"), cfg.pop("d_sae", None),
                                   cfg.pop("k", None), cfg.pop("preset", None),
                                   {**cfg, "seed": seed}, source.n, n_steps, n_epochs))
    sizes = {c.batch_size for c in built}
    if len(sizes) > 1:
        raise ValueError(f"all runs of a sweep share batches, so batch_size must be equal; "
                         f"got {sorted(sizes)}")
    return _train_runs(source, built, device=device, autocast=autocast, checkpoint_dir=None,
                       checkpoint_every=None, keep_checkpoints=0, resume=None,
                       progress=progress, log_every=log_every)


def _diff_configs(saved: dict, current: dict) -> list[str]:
    ignore = {"n_steps"}
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in ignore:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, list | tuple) and isinstance(b, list | tuple):
            a, b = list(a), list(b)
        if a != b:
            out.append(f"{key}: checkpoint {a!r} vs now {b!r}")
    return out


def _train_runs(source, configs: list[TrainConfig], *, device, autocast, checkpoint_dir,
                checkpoint_every, keep_checkpoints, resume, progress, log_every) -> list[SAE]:
    device = resolve_device(device)
    dist_info, device = distributed.setup(device)  # torchrun: join the group (no-op alone)
    if dist_info.world > 1 and any(c.resample_every for c in configs):
        raise ValueError("resample_every is not supported in data-parallel (torchrun) "
                         "training; rely on the AuxK loss (aux_alpha) there")
    first = configs[0]
    l2 = any(c.hparams.get("l2_normalise_inputs", False) for c in configs)
    if len({(c.center, c.scale, c.hparams.get("l2_normalise_inputs", False))
            for c in configs}) > 1:
        raise ValueError("runs of a sweep must share center, scale and l2_normalise_inputs")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every}")
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError("checkpoint_every needs checkpoint_dir= (where to write checkpoints)")

    saved_tensors = saved_state = None
    if resume is not None:
        saved_tensors, saved_state = load_checkpoint(resume)
        diffs = _diff_configs(saved_state["config"], first.to_dict())
        if diffs:
            raise ValueError("resume: the checkpoint was written by a different run; "
                             "differences: " + "; ".join(diffs))
        if saved_state["config"]["n_steps"] > first.n_steps:
            raise ValueError(f"resume: the checkpoint is for n_steps="
                             f"{saved_state['config']['n_steps']} but n_steps={first.n_steps}")
        if saved_state["d_in"] != source.d:
            raise ValueError(f"resume: the checkpoint has d_in={saved_state['d_in']} but the "
                             f"data has {source.d} columns")
        norm = Normalisation.from_dict(saved_state["normalisation"])
        init_sample = None
    else:
        sample = sample_rows(source, seed=first.seed)
        norm = _normalisation(sample, center=first.center, scale=first.scale, l2=l2)
        init_sample = sample[: min(len(sample), 4096)]

    batch_size = first.batch_size
    total_samples = max(c.n_steps for c in configs) * batch_size
    runs = [_Run(c, source.d, norm, device, init_sample, total_samples) for c in configs]
    distributed.attach(runs, dist_info)  # data-parallel steps under torchrun (no-op alone)
    if saved_state is not None:
        runs[0].load_state(saved_tensors, saved_state)
    start = min(r.step for r in runs)
    stream = BatchStream(source, batch_size, seed=first.seed, chunk_size=first.chunk_size,
                         buffer_chunks=first.buffer_chunks)
    n_steps = max(c.n_steps for c in configs)
    desc = f"sae {first.arch}" if len(runs) == 1 else f"sae sweep ×{len(runs)}"
    bar = progress_bar(total=n_steps, initial=start, desc=desc, unit="step",
                       disable=None if progress is None else not progress)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    t0 = time.perf_counter()
    step = start
    batches = stream.batches(start)
    while not all(r.finished for r in runs):
        x = torch.from_numpy(next(batches)).to(device, non_blocking=True)
        for run in runs:
            if not run.finished:
                run.train_step(x, autocast)
        step += 1
        if step % log_every == 0 or all(r.finished for r in runs):
            for run in runs:
                if run._log_acc:
                    run.flush_history()
            last = runs[0].history[-1] if runs[0].history else runs[0].last
            bar.set_postfix(loss=f"{last['loss']:.4g}", L0=f"{last['l0']:.1f}",
                            FVU=f"{last['fvu']:.3f}", dead=f"{last['dead']:.1%}")
        bar.update(1)
        if ckpt_dir is not None and dist_info.main and (
                (checkpoint_every and step % checkpoint_every == 0) or runs[0].finished):
            _write_checkpoint(ckpt_dir, runs[0], norm, source.d, keep_checkpoints)
    bar.close()
    seconds = time.perf_counter() - t0
    logger.info("trained %d SAE(s) for %d steps in %.1f s (%.0f samples/s)", len(runs),
                step - start, seconds, (step - start) * batch_size / max(seconds, 1e-9))
    extra = {"train_seconds": seconds, "resumed_from_step": start if resume else None}
    return [run.result(norm, extra) for run in runs]


def _write_checkpoint(folder: Path, run: _Run, norm: Normalisation, d_in: int,
                      keep: int) -> None:
    state = {"config": run.config.to_dict(), "d_in": d_in, "normalisation": norm.to_dict(),
             "arch": run.config.arch, **run.state_json()}
    save_checkpoint(folder / f"step_{run.step:08d}.safetensors", run.state_tensors(), state)
    if keep > 0:
        old = sorted(folder.glob("step_*.safetensors"))[:-keep]
        for path in old:
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
