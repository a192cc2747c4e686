"""Dask plumbing for the stages that fan out over fields or blocks of cells.

Ingestion (:func:`cellsae.images.ingest`) and extraction (:func:`cellsae.embed.extract`)
accept ``dask=True`` (a :class:`distributed.LocalCluster` on this machine) or
``dask="tcp://scheduler:8786"`` (an existing cluster, e.g. started with
``dask scheduler`` / ``dask worker`` or dask-jobqueue on a batch system) so one run spans
many machines. Tasks are submitted a bounded number at a time, so memory stays bounded
however many fields or cells there are. Workers read inputs and write their part of the
output by path: on several machines those paths must be on a shared file system.

Dask is an optional dependency: ``pip install 'cellsae[dask]'``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

logger = logging.getLogger(__name__)

DaskSpec = bool | str | Any | None


class DaskUnavailableError(ImportError):
    """dask.distributed is needed for ``dask=...`` but is not installed."""


def require_distributed():
    """Import :mod:`distributed`, or raise an error that says how to install it."""
    try:
        import distributed
    except ImportError as err:
        raise DaskUnavailableError(
            "dask=... needs dask.distributed, which is not installed; install it with "
            "`pip install 'cellsae[dask]'` (or `pip install dask distributed`), or leave "
            f"dask unset to use local worker processes ({err})"
        ) from None
    return distributed


@contextlib.contextmanager
def dask_client(spec: DaskSpec, *, n_workers: int = 2, threads_per_worker: int = 1,
                processes: bool = True, timeout: str = "30s") -> Iterator[Any]:
    """A :class:`distributed.Client` for ``spec``, closed (with its cluster) on exit.

    Parameters
    ----------
    spec : ``True`` / ``"local"`` (a new LocalCluster), a scheduler address
        (``"tcp://host:8786"``), or an existing ``Client`` (used as is, not closed).
    n_workers, threads_per_worker, processes : LocalCluster settings (ignored for an
        address or a client). ``processes=False`` runs workers as threads in this process.
    timeout : how long to wait for the scheduler at an address.
    """
    distributed = require_distributed()
    if isinstance(spec, distributed.Client):
        yield spec
        return
    if spec is True or spec == "local":
        cluster = distributed.LocalCluster(
            n_workers=max(1, int(n_workers)), threads_per_worker=max(1, int(threads_per_worker)),
            processes=processes, dashboard_address=":0", silence_logs=logging.WARNING)
        client = distributed.Client(cluster)
        logger.info("dask: local cluster with %d worker(s)", len(cluster.workers))
        try:
            yield client
        finally:
            client.close()
            cluster.close()
        return
    if isinstance(spec, str | os.PathLike):
        address = os.fspath(spec)
        try:
            client = distributed.Client(address, timeout=timeout)
        except OSError as err:
            raise ConnectionError(
                f"cannot reach the dask scheduler at {address!r} ({err}); start one with "
                "`dask scheduler` and workers with `dask worker ADDRESS`, or pass dask=True "
                "for a local cluster") from None
        n = len(client.scheduler_info().get("workers", {}))
        logger.info("dask: connected to %s (%d worker(s))", address, n)
        try:
            yield client
        finally:
            client.close()
        return
    raise TypeError(f"dask must be True, 'local', a scheduler address such as "
                    f"'tcp://host:8786' or a distributed.Client; got {spec!r}")


def dask_map(client, fn: Callable, items: Iterable, *, max_in_flight: int | None = None,
             **kwargs) -> Iterator[tuple[int, Any]]:
    """Run ``fn(item, **kwargs)`` on the cluster; yield ``(index, result)`` as tasks finish.

    At most ``max_in_flight`` tasks (default: 2 per worker thread) are queued at once, so
    results (and the items' inputs) never pile up in memory. When a task raises, the
    tasks in flight are allowed to finish (so none still writes after this returns), the
    rest are never submitted, and the error is re-raised here.
    """
    distributed = require_distributed()
    if max_in_flight is None:
        threads = sum(w.get("nthreads", 1)
                      for w in client.scheduler_info().get("workers", {}).values())
        max_in_flight = max(2, 2 * max(1, threads))
    pending = distributed.as_completed()
    index_of: dict[str, int] = {}
    live: dict[str, Any] = {}
    queue = iter(enumerate(items))

    def submit_next() -> bool:
        try:
            i, item = next(queue)
        except StopIteration:
            return False
        # pure=False: identical inputs are still separate tasks (no result sharing)
        fut = client.submit(fn, item, pure=False, **kwargs)
        index_of[fut.key] = i
        live[fut.key] = fut
        pending.add(fut)
        return True

    for _ in range(max_in_flight):
        if not submit_next():
            break
    try:
        for fut in pending:
            result = fut.result()
            i = index_of.pop(fut.key)
            live.pop(fut.key, None)
            fut.release()
            submit_next()
            yield i, result
    except BaseException:
        # let tasks already running finish (they may be writing into an output that the
        # caller is about to remove), then drop them
        futures = list(live.values())
        try:
            distributed.wait(futures, timeout=600)
        except Exception:  # noqa: BLE001 - a timeout or lost worker must not mask the error
            pass
        for fut in futures:
            fut.cancel()
        raise
