"""Data-parallel SAE training under ``torchrun`` (DistributedDataParallel semantics).

Launch any script that calls :func:`cellsae.sae.train` (or ``cellsae sae train``) with
``torchrun --nproc_per_node=N`` (one node) or ``torchrun --nnodes=M --node_rank=...
--rdzv_endpoint=host:port`` (several machines). When ``WORLD_SIZE > 1`` the trainer:

- joins the process group (NCCL on CUDA, one GPU per process by ``LOCAL_RANK``; gloo on
  CPU),
- gives every process the same global batch stream (same seed) and trains it on its
  ``1/world`` slice of each batch, so the global batch size is ``batch_size``,
- averages gradients over processes before each optimiser step (one all-reduce of all
  gradients, as DDP does) and synchronises the dead-latent counters and model buffers, so
  every process holds identical weights,
- writes checkpoints from rank 0 only.

Exactness: for architectures whose loss is a mean of per-sample terms (``relu``, ``topk``,
``gated``, ``jumprelu``) the result equals one process with the same global batch, up to
float summation order, while no latent is dead (the AuxK loss normalises by the variance
of the local residual). ``batchtopk`` / ``matryoshka`` pick their top ``k × batch``
activations within each process's slice, as DDP implementations of BatchTopK do, so they
are close to but not identical with one process. ``grad_clip`` clips each process's
gradient before averaging.

This module holds the glue only; the trainer calls :func:`setup` and :func:`attach`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

__all__ = ["DistInfo", "attach", "is_main", "setup", "world_info"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_info() -> DistInfo:
    """Rank and world size of an initialised process group (else 0 and 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def is_main() -> bool:
    """True in the process that writes files (rank 0, or a single process)."""
    return world_info().main


def setup(device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``).

    Returns the rank/world and the device this process trains on (``cuda:LOCAL_RANK`` on
    GPUs). A no-op in a single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return world_info(), device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
    info = world_info()
    logger.info("SAE training: rank %d of %d on %s", info.rank, info.world, device)
    return info, device


def _average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """All-reduce (mean) every gradient in one flat buffer; a parameter with no gradient
    on any process keeps ``grad=None`` (Adam then skips it, as in one process)."""
    import torch.distributed as dist

    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                           device=params[0].device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                      for p in params])
    dist.all_reduce(present)
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, has in zip(params, present.tolist(), strict=True):
        n = p.numel()
        if has > 0:
            grad = flat[offset:offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = grad.clone()
            else:
                p.grad.copy_(grad)
        offset += n


def attach(runs, info: DistInfo | None = None) -> None:
    """Make the trainer's runs data-parallel across the process group (no-op for one
    process). Wraps each run's ``train_step`` (batch slice, counter and buffer sync) and
    its optimiser's ``step`` (gradient averaging)."""
    info = info or world_info()
    if info.world <= 1:
        return
    import torch.distributed as dist

    for run in runs:
        batch = int(run.config.batch_size)
        if batch % info.world:
            raise ValueError(f"batch_size={batch} must be divisible by the number of "
                             f"processes ({info.world}) for data-parallel SAE training")
        params = [p for p in run.sae.parameters() if p.requires_grad]
        optimizer_step = run.optimizer.step

        def step(*args, _params=params, _step=optimizer_step, **kwargs):
            _average_gradients(_params, info.world)
            return _step(*args, **kwargs)

        run.optimizer.step = step
        train_step = run.train_step

        def sharded_step(x, autocast, _run=run, _train=train_step):
            share = len(x) // info.world
            local = x[info.rank * share:(info.rank + 1) * share]
            _train(local, autocast)
            with torch.no_grad():
                # dead-latent counters over the global batch: a latent fired anywhere is
                # reset; elsewhere the count grows by the global batch size
                counts = _run.samples_since_fired
                dist.all_reduce(counts, op=dist.ReduceOp.MIN)
                counts[counts > 0] += len(x) - len(local)
                for name, buf in _run.sae.named_buffers():
                    if name in ("input_mean", "input_scale"):  # equal on every process
                        continue
                    if buf.is_floating_point():
                        dist.all_reduce(buf)
                        buf /= info.world
                    elif buf.numel():
                        dist.all_reduce(buf, op=dist.ReduceOp.MAX)

        run.train_step = sharded_step
