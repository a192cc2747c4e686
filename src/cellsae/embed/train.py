"""Train an encoder on single-cell crops.

Objectives (``TrainConfig.objective``):

- ``supervised``: genotype classification (cross-entropy on a linear head) with
  class-balanced batches.
- ``moco``: MoCo v2, self-supervised; a momentum (EMA) key encoder embeds a second view
  of each crop, and the query must pick its own key out of the batch keys plus a FIFO
  queue of earlier keys.
- ``supcon``: the paper's objective; the same momentum encoder and queue, but every key
  of the same class (batch and queue, own key included) is a positive (SupCon loss).

Validation and test cells come from donors never seen in training (``split_mode``,
default ``donor``; see :mod:`cellsae.embed.splits`). Each epoch reports the loss and the
validation accuracy (the classifier head for ``supervised``, a logistic-regression probe
on frozen embeddings otherwise); training stops early after ``patience`` epochs without
improvement and the best epoch's weights are kept.

With ``out_dir`` the run writes ``last.safetensors`` / ``last.json`` after every epoch
(everything needed to resume exactly: weights, momentum encoder, queue, optimiser state,
augmentation random state) and ``encoder.safetensors`` / ``encoder.json`` at the end.
``resume=True`` continues an interrupted run and ends with the same weights as an
uninterrupted one.

Under ``torchrun`` (``WORLD_SIZE > 1``) training uses DistributedDataParallel (NCCL on
CUDA, gloo on CPU); each process takes an equal slice of every global batch and keys
are gathered across processes, so the result equals one process with the same global
batch (up to floating-point summation order). Batch normalisation is synchronised across
processes on CUDA; on CPU each process normalises over its own slice (use ``norm="group"``
or ``"none"`` for identical results).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .._utils import SeedLike, atomic_write_text, progress, resolve_device
from ..config import ConfigError, StrictModel, validate_config
from ._data import CropReader, as_crop_store, check_crops_finite, iter_batches
from .augment import AugmentConfig, augment
from .base import Encoder, build_encoder, renorm_unit_per_out_channel_
from .io import _json_default, save_encoder, save_tensors
from .splits import check_split, split_cells

logger = logging.getLogger(__name__)

STATE_FORMAT = "cellsae.encoder-train-state"
STATE_VERSION = 1

# The default is sized for CPUs: about a minute for 2000 64×64 crops on 2 cores. Post-
# activation blocks with batch norm learned fastest in that budget on the synthetic world
# (held-out-donor probe 0.62 vs 0.57 for pre-activation); the paper's network (no
# normalisation, unit-norm weights) is `resnet_paper` / {"norm": "none", "preact": True}.
DEFAULT_ENCODER = {"arch": "resnet", "widths": [16, 32, 64], "blocks": [1, 1, 1],
                   "strides": [1, 2, 2], "stem_stride": 2, "norm": "batch", "preact": False}


class TrainConfig(StrictModel):
    """Hyper-parameters of encoder training (validated; unknown keys are errors)."""

    objective: Literal["supervised", "moco", "supcon"] = "supervised"
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(64, ge=2)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(4e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    momentum: float = Field(0.99, ge=0, lt=1, description="EMA of the key encoder")
    queue_size: int = Field(4096, ge=0)
    temperature: float = Field(0.1, gt=0)
    proj_hidden: int = Field(256, ge=1)
    proj_dim: int = Field(64, ge=1)
    l2_pool: bool = True
    balance: Literal["class", "none"] = "class"
    donor_adversary: float = Field(
        0.0, ge=0, description="weight of the donor adversary: a linear classifier of each "
        "cell's donor among the training donors of its own class, trained on the embedding "
        "through a reversed gradient, so the encoder unlearns what tells donors of one class "
        "apart (donor shortcuts that do not carry over to new donors); 0 disables it. The "
        "recorded loss then includes the adversary's cross-entropy. On the synthetic world "
        "(2000 cells, 3 donor folds, 6 epochs) a weight of 1 lowered the held-out-donor probe "
        "from 0.60 to 0.57, so it is off by default")
    augment: AugmentConfig = AugmentConfig()
    patience: int | None = Field(4, ge=1)
    amp: bool = True
    num_workers: int = Field(0, ge=0)
    probe_max_cells: int = Field(2000, ge=10)
    seed: int = Field(0, ge=0)


@dataclass
class TrainResult:
    """A trained encoder and how training went.

    Attributes
    ----------
    model : the encoder with the best epoch's weights, in eval mode, on CPU.
    classes : (k,) class names in label-index order.
    split : (n_cells,) ``train`` / ``val`` / ``test`` of every cell.
    history : one dict per epoch (``epoch, loss, val_acc, seconds, crops_per_s``).
    best_epoch : epoch (from 1) whose weights were kept.
    best_val_acc : its validation accuracy (NaN without validation cells).
    stopped_early : whether patience ended training.
    train_crops_per_s : mean training throughput (crops through the encoder per second).
    """

    model: Encoder
    classes: np.ndarray
    split: np.ndarray
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = float("nan")
    stopped_early: bool = False
    train_crops_per_s: float = float("nan")
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"classes": [str(c) for c in self.classes], "history": self.history,
                "best_epoch": self.best_epoch, "best_val_acc": self.best_val_acc,
                "stopped_early": self.stopped_early,
                "train_crops_per_s": self.train_crops_per_s, "config": self.config,
                "split_counts": {p: int((self.split == p).sum()) for p in ("train", "val", "test")}}


# -- modules ------------------------------------------------------------------------------


class Projector(nn.Module):
    """Linear → ReLU → Linear (no biases), unit-norm output; input L2-normalised first
    when ``l2_pool`` (the paper's default)."""

    def __init__(self, d_in: int, hidden: int, d_out: int, l2_pool: bool = True):
        super().__init__()
        self.l2_pool = l2_pool
        self.fc1 = nn.Linear(d_in, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, d_out, bias=False)

    def forward(self, h):
        if self.l2_pool:
            h = F.normalize(h, dim=1)
        return F.normalize(self.fc2(F.relu(self.fc1(h))), dim=1)


class _ReverseGrad(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``-scale`` on the way back."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


class _TrainModule(nn.Module):
    """Encoder + objective head, and optionally a donor adversary on the embedding."""

    def __init__(self, encoder: Encoder, head: nn.Module, adversary: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.adversary = adversary

    def forward(self, x, reverse_scale: float = 0.0):
        h = self.encoder(x)
        if self.adversary is None:
            return self.head(h)
        return self.head(h), self.adversary(_ReverseGrad.apply(h, reverse_scale))


# -- distributed ------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    created: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: torch.device) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), device
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    if device.type == "cuda":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
    return _Dist(dist.get_rank(), dist.get_world_size(), created), device


def _gather(x: torch.Tensor, dist_info: _Dist) -> torch.Tensor:
    if dist_info.world == 1:
        return x
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(dist_info.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


# -- batches ------------------------------------------------------------------------------


def _epoch_batches(train_idx: np.ndarray, y_train: np.ndarray, n_classes: int,
                   batch_size: int, balance: str, seed: int, epoch: int) -> list[np.ndarray]:
    """The global batches of one epoch, a pure function of (seed, epoch) for exact resume."""
    rng = np.random.default_rng([seed, epoch, 7])
    n_batches = max(1, len(train_idx) // batch_size)
    if balance == "none":
        perm = rng.permutation(len(train_idx))
        if len(perm) < batch_size:
            perm = np.resize(perm, batch_size)
        return [train_idx[perm[i * batch_size:(i + 1) * batch_size]] for i in range(n_batches)]
    pools = [train_idx[y_train == k] for k in range(n_classes)]
    # equal share per class; the remainder goes to classes chosen at random per batch
    base = batch_size // n_classes
    extra = batch_size - base * n_classes
    need = base * n_batches + extra * n_batches
    streams = []
    for pool in pools:
        reps = int(math.ceil(need / len(pool)))
        streams.append(np.concatenate([pool[rng.permutation(len(pool))] for _ in range(reps)]))
    pos = [0] * n_classes
    batches = []
    for _ in range(n_batches):
        counts = np.full(n_classes, base)
        if extra:
            counts[rng.choice(n_classes, extra, replace=False)] += 1
        parts = []
        for k in range(n_classes):
            parts.append(streams[k][pos[k]:pos[k] + counts[k]])
            pos[k] += counts[k]
        b = np.concatenate(parts)
        batches.append(b[rng.permutation(len(b))])
    return batches


# -- validation ---------------------------------------------------------------------------


@torch.no_grad()
def embed_tensor_batches(encoder: Encoder, reader: CropReader, indices: np.ndarray,
                         device: torch.device, amp: bool, batch_size: int = 256,
                         head: nn.Module | None = None) -> np.ndarray:
    """Pooled embeddings (or head outputs) of ``indices``, in order, as float32."""
    was_training = encoder.training
    encoder.eval()
    if head is not None:
        head.eval()
    out = []
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    for b in batches:
        x = reader(b).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=amp and device.type == "cuda"):
            h = encoder(x)
            if head is not None:
                h = head(h)
        out.append(h.float().cpu().numpy())
    encoder.train(was_training)
    if head is not None:
        head.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, encoder.embed_dim), np.float32)


def _probe_accuracy(z_train, y_train, z_val, y_val, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(z_train)
    clf = LogisticRegression(C=1.0, max_iter=500, random_state=seed)
    clf.fit(scaler.transform(z_train), y_train)
    return float((clf.predict(scaler.transform(z_val)) == y_val).mean())


# -- state --------------------------------------------------------------------------------


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict):
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in sd.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


# -- input checks -------------------------------------------------------------------------


def _encode_labels(labels, classes=None) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    if isinstance(labels, pd.Series):
        labels = labels.to_numpy() if not isinstance(labels.dtype, pd.CategoricalDtype) \
            else pd.Categorical(labels)
    if isinstance(labels, pd.Categorical) and classes is None:
        classes = np.asarray(labels.categories).astype(str)
        labels = np.asarray(labels).astype(str)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if pd.isna(labels).any():
        raise ValueError(f"labels contain {int(pd.isna(labels).sum())} missing value(s); "
                         "every training cell needs a class")
    labels = labels.astype(str)
    classes = np.unique(labels) if classes is None else np.asarray(classes).astype(str)
    unknown = sorted(set(np.unique(labels)) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {list(classes)}")
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in labels], np.int64), classes


def _resolve_split(n: int, y: np.ndarray, classes: np.ndarray, split, donors, split_mode,
                   fractions, seed) -> np.ndarray:
    if split is not None:
        split = np.asarray(split).astype(str)
        if len(split) != n:
            raise ValueError(f"split has {len(split)} entries but there are {n} crops")
        check_split(split, donors, what="donor")
        return split
    if split_mode == "random":
        groups = np.arange(n).astype(str)
    else:
        if donors is None:
            raise ValueError("donors are needed for a donor split (cells of one donor are not "
                             "independent samples); pass donors=..., a precomputed split=..., "
                             "or split_mode='random' to split by cell (inflates accuracy)")
        groups = np.asarray(donors).astype(str)
        if len(groups) != n:
            raise ValueError(f"donors has {len(groups)} entries but there are {n} crops")
    return split_cells(groups, labels=classes[y], fractions=fractions, seed=seed,
                       what="cell" if split_mode == "random" else "donor")


# -- training -----------------------------------------------------------------------------


def train_encoder(crops, labels, *, donors=None, split=None, split_mode: str = "donor",
                  fractions=(0.6, 0.2, 0.2), classes=None,
                  encoder: Encoder | str | dict | None = None,
                  config: TrainConfig | dict | None = None, out_dir: str | os.PathLike | None = None,
                  resume: bool = False, device: Any = "auto",
                  callback: Callable[[int, dict], bool] | None = None,
                  seed: SeedLike = None) -> TrainResult:
    """Train an encoder on crops with genotype labels, holding out whole donors.

    Parameters
    ----------
    crops : (n, C, H, W) array, ``CropStore``, ``.h5sc`` path or AnnData with crops.
    labels : (n,) class of every cell (genotype). Cells labelled in a ``classes`` list
        but with no training cells are an error.
    donors : (n,) donor of every cell; required for ``split_mode="donor"``.
    split : (n,) precomputed ``train``/``val``/``test`` (overrides ``split_mode``); it is
        checked that no donor spans two parts.
    split_mode : ``donor`` (default) or ``random`` (by cell; inflates accuracy). For
        plate/well/field splits, compute ``split`` with :func:`cellsae.embed.make_split`.
    fractions : (train, val, test) shares of donors for the split.
    classes : class names in label-index order (default: sorted unique labels).
    encoder : an :class:`Encoder` (its weights are the starting point), an architecture
        name, or a dict ``{"arch": ..., **params}``; default a small ResNet.
    config : :class:`TrainConfig` or a dict of its fields.
    out_dir : folder for checkpoints and the final ``encoder.safetensors``.
    resume : continue from ``out_dir/last.json`` if present.
    device : ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
    callback : called as ``callback(epoch, record)`` after each epoch; return True to stop.
    seed : overrides ``config.seed`` when given.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        Wrong channel count for the given encoder, NaN/Inf in the crops, a class with no
        training cells, too few donors for a held-out split (``SplitError``) — all before
        any training step.
    """
    cfg = config if isinstance(config, TrainConfig) else validate_config(
        TrainConfig, config or {}, source="embed training config")
    if seed is not None:
        cfg = cfg.model_copy(update={"seed": int(seed)})
    store = as_crop_store(crops)
    n, n_channels = int(store.shape[0]), int(store.shape[1])
    if n == 0:
        raise ValueError("no crops to train on")
    y, classes = _encode_labels(labels, classes)
    if len(y) != n:
        raise ValueError(f"labels has {len(y)} entries but there are {n} crops")
    if len(classes) < 2:
        raise ValueError(f"training needs at least 2 classes, got {list(classes)}")
    split = _resolve_split(n, y, classes, split, donors, split_mode, fractions, cfg.seed)
    train_idx = np.flatnonzero(split == "train")
    val_idx = np.flatnonzero(split == "val")
    counts = np.bincount(y[train_idx], minlength=len(classes))
    empty = [str(c) for c, k in zip(classes, counts, strict=True) if k == 0]
    if empty:
        raise ValueError(f"class(es) {empty} have no training cells (training counts: "
                         f"{dict(zip(classes.tolist(), counts.tolist(), strict=True))}); "
                         "add cells or donors of that class, or drop it from classes")
    if cfg.objective == "supcon" and cfg.batch_size < len(classes):
        raise ConfigError(f"batch_size {cfg.batch_size} is smaller than the {len(classes)} classes")

    # encoder
    fresh = not isinstance(encoder, Encoder)
    if isinstance(encoder, Encoder):
        model = encoder
    else:
        params = dict(DEFAULT_ENCODER)
        if isinstance(encoder, str):
            params = {"arch": encoder}
        elif isinstance(encoder, dict):
            params = dict(encoder) if "arch" in encoder else {**DEFAULT_ENCODER, **encoder}
        arch = params.pop("arch")
        params.setdefault("in_channels", n_channels)
        if arch == "vit":
            params.setdefault("image_size", int(store.shape[-1]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = build_encoder(arch, **params)
    if model.in_channels != n_channels:
        raise ValueError(f"crops have {n_channels} channels but the encoder expects "
                         f"{model.in_channels}; pass crops with the channels it was trained "
                         "on, in the same order")
    check_crops_finite(store, np.concatenate([train_idx, val_idx]))

    device = resolve_device(device)
    dist_info, device = _setup_distributed(device)
    if cfg.batch_size % dist_info.world:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the "
                          f"{dist_info.world} processes")
    local_bs = cfg.batch_size // dist_info.world
    use_amp = cfg.amp and device.type == "cuda"

    reader = CropReader(store, np.concatenate([train_idx, val_idx]))
    untouched = bool((model.input_mean == 0).all() and (model.input_std == 1).all())
    if (fresh or untouched) and model.input_norm == "dataset":
        rng = np.random.default_rng([cfg.seed, 11])
        sample = np.sort(rng.choice(train_idx, min(len(train_idx), 2000), replace=False))
        xs = reader(sample).double()
        model.set_input_stats(xs.mean(dim=(0, 2, 3)), xs.std(dim=(0, 2, 3)))

    contrastive = cfg.objective in ("moco", "supcon")
    with torch.random.fork_rng(devices=[]):  # seeded, and the caller's generator untouched
        torch.manual_seed(cfg.seed + 1)
        if contrastive:
            head = Projector(model.embed_dim, cfg.proj_hidden, cfg.proj_dim, cfg.l2_pool)
        else:
            head = nn.Linear(model.embed_dim, len(classes))
    adversary, donor_code, donor_allowed = None, None, None
    if cfg.donor_adversary > 0:
        if donors is None:
            raise ValueError("donor_adversary needs the donor of every cell: pass donors=...")
        donor_arr = np.asarray(donors).astype(str)
        if len(donor_arr) != n:
            raise ValueError(f"donors has {len(donor_arr)} entries but there are {n} crops")
        train_donors, code = np.unique(donor_arr[train_idx], return_inverse=True)
        donor_code = np.full(n, -1, np.int64)
        donor_code[train_idx] = code
        donor_class = np.zeros(len(train_donors), np.int64)
        donor_class[code] = y[train_idx]
        # (n_classes, n_donors): which donors a cell of each class is told apart from
        donor_allowed = torch.from_numpy(donor_class[None, :] == np.arange(len(classes))[:, None])
        donor_allowed = donor_allowed.to(device)
        donor_code = torch.from_numpy(donor_code)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 3)
            adversary = nn.Linear(model.embed_dim, len(train_donors))
    module = _TrainModule(model, head, adversary).to(device)
    module.train()
    key_module = None
    if contrastive:
        key_module = copy.deepcopy(_TrainModule(model, head)).to(device)
        for p in key_module.parameters():
            p.requires_grad_(False)
    queue = torch.zeros(cfg.queue_size, cfg.proj_dim, device=device)
    queue_labels = torch.full((cfg.queue_size,), -1, dtype=torch.long, device=device)
    queue_ptr, queue_filled = 0, 0

    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(module.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                              weight_decay=cfg.weight_decay)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 2)

    steps_per_epoch = max(1, len(train_idx) // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return cfg.lr * (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    history: list[dict] = []
    best_val, best_epoch, bad_epochs = -1.0, 0, 0
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch, step = 1, 0
    resumed_rng: dict[str, torch.Tensor] = {}
    out_dir = Path(out_dir) if out_dir is not None else None
    run_meta = {"config": cfg.model_dump(mode="json"), "encoder": model.config(),
                "classes": classes.tolist(), "n_train": int(len(train_idx)),
                "n_val": int(len(val_idx)), "world_size": dist_info.world}

    if resume and out_dir is not None and (out_dir / "last.json").exists():
        from ..integrity import IntegrityError, read_safetensors

        # the state saved inside the weights file is the one that matches them (a kill
        # between writing last.safetensors and last.json leaves last.json one epoch old);
        # the tensors' digest catches a truncated or corrupted file
        tensors, header = read_safetensors(out_dir / "last.safetensors",
                                           what="encoder training checkpoint")
        try:
            meta = json.loads(header["state"] if "state" in header else
                              (out_dir / "last.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise IntegrityError(f"the training state in '{out_dir}' is not valid JSON ({err}); "
                                 "the checkpoint is corrupt: start a new run") from None
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"'{out_dir / 'last.json'}' is not a cellsae training state")
        for key in ("config", "encoder", "classes", "n_train", "n_val"):
            if meta["run"].get(key) != run_meta[key]:
                raise ValueError(f"cannot resume from '{out_dir}': its {key} differs from this "
                                 f"run's ({meta['run'].get(key)!r} vs {run_meta[key]!r}); "
                                 "use a new out_dir or the same settings")
        module.load_state_dict(_unprefixed("module", tensors))
        if key_module is not None:
            key_module.load_state_dict(_unprefixed("key", tensors))
        if "queue" in tensors:
            queue.copy_(tensors["queue"].to(device))
            queue_labels.copy_(tensors["queue_labels"].to(device))
        _load_optimizer(opt, tensors, meta["optimizer"])
        aug_gen.set_state(tensors["aug_generator"])
        resumed_rng = {k: tensors[k] for k in ("torch_rng", "cuda_rng") if k in tensors}
        best = _unprefixed("best", tensors)
        best_state = best or None
        history = meta["history"]
        best_val, best_epoch, bad_epochs = meta["best_val"], meta["best_epoch"], meta["bad_epochs"]
        queue_ptr, queue_filled = meta["queue_ptr"], meta["queue_filled"]
        start_epoch, step = meta["epoch"] + 1, meta["step"]
        logger.info("resumed training from %s at epoch %d", out_dir, start_epoch)

    if not resume and out_dir is not None and (out_dir / "last.json").exists():
        logger.warning("'%s' holds a previous run; it will be overwritten (resume=True "
                       "continues it instead)", out_dir)
    train_module: nn.Module = module
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            # batch statistics over the global batch, as in one process
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            model, head = module.encoder, module.head
        train_module = DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)

    def save_state(epoch: int):
        tensors = {**_prefixed("module", module.state_dict())}
        if key_module is not None:
            tensors.update(_prefixed("key", key_module.state_dict()))
            tensors["queue"] = queue
            tensors["queue_labels"] = queue_labels
        opt_tensors, opt_meta = _optimizer_tensors(opt)
        tensors.update(opt_tensors)
        tensors["aug_generator"] = aug_gen.get_state()
        tensors["torch_rng"] = torch.get_rng_state()
        if device.type == "cuda":
            tensors["cuda_rng"] = torch.cuda.get_rng_state(device)
        if best_state is not None:
            tensors.update(_prefixed("best", best_state))
        meta = {"format": STATE_FORMAT, "format_version": STATE_VERSION, "run": run_meta,
                "epoch": epoch, "step": step, "history": history, "best_val": best_val,
                "best_epoch": best_epoch, "bad_epochs": bad_epochs, "queue_ptr": queue_ptr,
                "queue_filled": queue_filled, "optimizer": opt_meta}
        from ..integrity import tensors_sha256

        text = json.dumps(meta, indent=1, default=_json_default)
        save_tensors(out_dir / "last.safetensors", tensors,
                     metadata={"tensors_sha256": tensors_sha256(tensors), "state": text})
        atomic_write_text(out_dir / "last.json", text)

    # Layers that draw random numbers in training (dropout) use the global generators:
    # seed them for this run (saved with the state, so resume continues the same stream)
    # and give the caller's generators back afterwards.
    rng_scope = contextlib.ExitStack()
    rng_scope.enter_context(torch.random.fork_rng(
        devices=[device.index or 0] if device.type == "cuda" else []))
    torch.default_generator.manual_seed(cfg.seed + 4)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(cfg.seed + 4)
    if "torch_rng" in resumed_rng:
        torch.set_rng_state(resumed_rng["torch_rng"])
    if "cuda_rng" in resumed_rng and device.type == "cuda":
        torch.cuda.set_rng_state(resumed_rng["cuda_rng"], device)
    y_t = torch.from_numpy(y)
    stopped_early = False
    if history and cfg.patience is not None and bad_epochs >= cfg.patience:
        stopped_early = True
    bar = progress(total=total_steps, desc=f"train {cfg.objective}", unit="step",
                   disable=None if dist_info.main else True, initial=step)
    throughput = [h["crops_per_s"] for h in history]
    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            if stopped_early:
                break
            batches = _epoch_batches(train_idx, y[train_idx], len(classes), cfg.batch_size,
                                     cfg.balance, cfg.seed, epoch)
            local = [b[dist_info.rank * local_bs:(dist_info.rank + 1) * local_bs]
                     for b in batches]
            t0 = time.perf_counter()
            losses = []
            for b_local, x in zip(local, iter_batches(reader, local,
                                                      num_workers=cfg.num_workers),
                                  strict=True):
                x = x.to(device, non_blocking=True)
                yb = y_t[b_local].to(device)
                offset = dist_info.rank * local_bs
                for group in opt.param_groups:
                    group["lr"] = lr_at(step)
                # DANN schedule: the reversed gradient grows from 0 to donor_adversary
                progress_frac = step / max(1, total_steps)
                reverse = cfg.donor_adversary * (2 / (1 + math.exp(-10 * progress_frac)) - 1)
                adv_logits = None
                if not contrastive:
                    v = augment(x, cfg.augment, aug_gen, n_total=cfg.batch_size, offset=offset)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                        logits = train_module(v, reverse)
                    if adversary is not None:
                        logits, adv_logits = logits
                    loss = F.cross_entropy(logits.float(), yb)
                else:
                    v1 = augment(x, cfg.augment, aug_gen, n_total=cfg.batch_size, offset=offset)
                    v2 = augment(x, cfg.augment, aug_gen, n_total=cfg.batch_size, offset=offset)
                    with torch.no_grad():
                        m = cfg.momentum
                        query = nn.ModuleList([module.encoder, module.head])
                        for pk, pq in zip(key_module.parameters(), query.parameters(),
                                          strict=True):
                            pk.mul_(m).add_(pq.detach(), alpha=1 - m)
                        for bk, bq in zip(key_module.buffers(), query.buffers(), strict=True):
                            bk.copy_(bq)
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                            k = key_module(v2)
                        k = F.normalize(k.float(), dim=1)
                        k_all = _gather(k, dist_info)
                        y_all = _gather(yb, dist_info)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                        q = train_module(v1, reverse)
                    if adversary is not None:
                        q, adv_logits = q
                    q = q.float()
                    pool = torch.cat([k_all, queue[:queue_filled]])
                    logits = q @ pool.T / cfg.temperature
                    if cfg.objective == "supcon":
                        pool_labels = torch.cat([y_all, queue_labels[:queue_filled]])
                        pos = (yb[:, None] == pool_labels[None, :]).float()
                    else:
                        pos = torch.zeros_like(logits)
                        own = torch.arange(len(q), device=device) + offset
                        pos[torch.arange(len(q), device=device), own] = 1.0
                    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
                    loss = -((pos * log_prob).sum(1) / pos.sum(1)).mean()
                if adv_logits is not None:
                    # donor among the training donors of the cell's own class
                    adv = adv_logits.float().masked_fill(~donor_allowed[yb], float("-inf"))
                    loss = loss + F.cross_entropy(adv, donor_code[b_local].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
                opt.step()
                if getattr(model, "weight_renorm", False):
                    renorm_unit_per_out_channel_(model)
                if contrastive and cfg.queue_size > 0:
                    with torch.no_grad():
                        kk, yy = k_all[-cfg.queue_size:], y_all[-cfg.queue_size:]
                        idx = (queue_ptr + torch.arange(len(kk), device=device)) % cfg.queue_size
                        queue[idx] = kk
                        queue_labels[idx] = yy
                        queue_ptr = int((queue_ptr + len(kk)) % cfg.queue_size)
                        queue_filled = min(cfg.queue_size, queue_filled + len(kk))
                step += 1
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}",
                                val_acc=f"{best_val:.3f}" if best_val >= 0 else "-")
            seconds = time.perf_counter() - t0
            crops_per_s = len(batches) * cfg.batch_size * (2 if contrastive else 1) / seconds
            throughput.append(crops_per_s)

            val_acc = float("nan")
            if len(val_idx):
                if contrastive:
                    rng = np.random.default_rng([cfg.seed, 13])
                    sub = np.sort(rng.choice(train_idx, min(len(train_idx), cfg.probe_max_cells),
                                             replace=False))
                    z_tr = embed_tensor_batches(model, reader, sub, device, cfg.amp)
                    z_va = embed_tensor_batches(model, reader, val_idx, device, cfg.amp)
                    val_acc = _probe_accuracy(z_tr, y[sub], z_va, y[val_idx], cfg.seed)
                else:
                    logits = embed_tensor_batches(model, reader, val_idx, device, cfg.amp,
                                                  head=head)
                    val_acc = float((logits.argmax(1) == y[val_idx]).mean())
            record = {"epoch": epoch, "loss": float(np.mean(losses)), "val_acc": val_acc,
                      "lr": lr_at(step - 1), "seconds": seconds, "crops_per_s": crops_per_s}
            history.append(record)
            if len(val_idx) == 0 or val_acc > best_val:
                best_val = val_acc if len(val_idx) else best_val
                best_epoch, bad_epochs = epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
            if dist_info.main:
                logger.info("epoch %d/%d  loss %.4f  val_acc %.3f  (%.0f crops/s)", epoch,
                            cfg.epochs, record["loss"], val_acc, crops_per_s)
            bar.set_postfix(loss=f"{record['loss']:.3f}", val_acc=f"{val_acc:.3f}")
            if cfg.patience is not None and bad_epochs >= cfg.patience:
                stopped_early = True
                logger.info("early stop: no validation improvement for %d epochs (best %.3f at "
                            "epoch %d)", bad_epochs, best_val, best_epoch)
            if out_dir is not None and dist_info.main:
                save_state(epoch)
            if callback is not None and callback(epoch, record):
                break
    finally:
        bar.close()
        rng_scope.close()

    if best_state is not None:
        model.load_state_dict(best_state)
    model = model.cpu().eval()
    result = TrainResult(model=model, classes=classes, split=split, history=history,
                         best_epoch=best_epoch,
                         best_val_acc=float(best_val) if len(val_idx) else float("nan"),
                         stopped_early=stopped_early,
                         train_crops_per_s=float(np.mean(throughput)) if throughput
                         else float("nan"), config=cfg.model_dump(mode="json"))
    if out_dir is not None and dist_info.main:
        save_encoder(model, out_dir / "encoder.safetensors",
                     extra={"classes": classes.tolist(), "channel_names": store.channel_names,
                            "training": result.to_dict()})
    if dist_info.created:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return result
