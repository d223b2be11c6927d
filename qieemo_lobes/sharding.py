"""Share one list of work between processes, each its part, balanced by duration.

- :func:`shard` deals a list out to ``world_size`` processes: every item to exactly one of them,
  the same way in every process, with about the same total duration each.
- :func:`fill_cache` fills a :class:`~qieemo_lobes.features.FeatureCache` under DDP
  (``torchrun``): every process encodes its share of the missing entries, they wait for each
  other, then each gets the entry of every utterance. Without DDP it is
  :meth:`~qieemo_lobes.features.FeatureCache.precompute`, unchanged. Processes may fill one cache
  folder at the same time: an entry is named by its content (:func:`~qieemo_lobes.features.
  content_key`) and written whole by an atomic rename, so two processes that encode the same
  entry write the same file, and a reader sees one of the two complete copies, never a partial
  one. :func:`precompute_shared` is the same, with the signature of SpeechBrain's ``run_on_main``
  (for :func:`qieemo_lobes.augmentation.cache_copies`).
- ``classify --shard I/N`` uses :func:`shard` too (:mod:`qieemo_lobes.classify_shards`).

Nothing here imports torch until a DDP process group is asked about.

Example
-------
>>> clips = [("a", 2.0), ("b", 9.0), ("c", 4.0), ("d", 3.0), ("e", 2.5)]
>>> [shard(clips, rank, 2, seconds=lambda clip: clip[1]) for rank in (0, 1)]
[[('a', 2.0), ('b', 9.0)], [('c', 4.0), ('d', 3.0), ('e', 2.5)]]
"""

from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["environment_shard", "fill_cache", "precompute_shared", "shard", "world"]

T = TypeVar("T")
logger = logging.getLogger(__name__)


def shard(
    items: Sequence[T],
    rank: int,
    world_size: int,
    seconds: Callable[[T], float] | None = None,
) -> list[T]:
    """The items that process ``rank`` of ``world_size`` takes, in their order in ``items``.

    The items are dealt longest first (by ``seconds(item)``; ties in list order), each to the
    process with the least total so far (ties: fewer items, then the lower rank). So every item
    goes to exactly one process, every process computes the same deal from the same list, and
    the processes' totals differ by at most the longest item. Without ``seconds`` every item
    counts 1: round-robin.

    Arguments
    ---------
    items : sequence
        The whole list, the same in every process.
    rank : int
        This process, from 0 to ``world_size - 1``.
    world_size : int
        The number of processes (at least 1).
    seconds : callable, optional
        An item's duration (or any cost); default 1 for every item.

    Returns
    -------
    list
        This process's items, in list order.

    Example
    -------
    >>> shard(list("abcdefg"), 0, 3), shard(list("abcdefg"), 1, 3), shard(list("abcdefg"), 2, 3)
    (['a', 'd', 'g'], ['b', 'e'], ['c', 'f'])
    >>> durations = {"x": 1.0, "y": 5.0, "z": 2.0, "w": 2.0}
    >>> [shard(list(durations), r, 2, seconds=durations.get) for r in (0, 1)]
    [['y'], ['x', 'z', 'w']]
    >>> shard([], 0, 4)
    []
    >>> shard(["a"], 2, 2)
    Traceback (most recent call last):
    ...
    ValueError: rank 2 outside 0..1 (world size 2)
    """
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1} (world size {world_size})")
    if world_size == 1:
        return list(items)
    cost = [1.0 if seconds is None else float(seconds(item) or 0.0) for item in items]
    order = sorted(range(len(items)), key=lambda i: (-cost[i], i))
    loads = [(0.0, 0, r) for r in range(world_size)]  # (total, count, rank): a heap
    mine = []
    for i in order:
        total, count, owner = heapq.heappop(loads)
        if owner == rank:
            mine.append(i)
        heapq.heappush(loads, (total + cost[i], count + 1, owner))
    return [items[i] for i in sorted(mine)]


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process's DDP group; ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(value: Any, world_size: int) -> list:
    """Every process's ``value``, by rank (DDP's ``all_gather_object``)."""
    import torch.distributed as dist

    values: list = [None] * world_size
    dist.all_gather_object(values, value)
    return values


def _seconds(record: Mapping) -> float:
    """An utterance's duration, for dealing: the manifest's, its segment's, else its header's."""
    if record.get("duration"):
        return float(record["duration"])
    if record.get("start") is not None and record.get("stop") is not None:
        return float(record["stop"]) - float(record["start"])
    from qieemo_lobes.features import _duration

    return _duration(record["wav"])


def precompute_shared(precompute: Callable, kwargs: Mapping) -> None:
    """``run_on_main(cache.precompute, kwargs=kwargs)``, with the work shared: every DDP process
    encodes its share of ``kwargs["utterances"]`` (:func:`shard` by duration; a progress bar on
    rank 0 only), then they wait for each other, so that every entry exists when it returns.

    ``precompute`` is a :class:`~qieemo_lobes.features.FeatureCache`'s bound ``precompute``;
    rank 0 logs how many entries each process encoded. Without DDP it is
    ``precompute(**kwargs)``.
    """
    kwargs = dict(kwargs)
    rank, size = world()
    if size == 1:
        precompute(**kwargs)
        return
    from speechbrain.utils.distributed import ddp_barrier

    from qieemo_lobes.features import looks_complete

    items = list(kwargs.pop("utterances").items())
    share = dict(shard(items, rank, size, seconds=lambda item: _seconds(item[1])))
    cache = precompute.__self__
    speed, copies = kwargs.get("speed", 100), kwargs.get("copies")
    missing = sum(
        not looks_complete(
            cache.entry(
                record["wav"],
                record.get("start"),
                record.get("stop"),
                speed,
                copies[utt] if copies is not None else None,
            )
        )
        for utt, record in share.items()
    )
    kwargs["progress"] = rank == 0 and kwargs.get("progress", True)
    precompute(share, **kwargs)
    counts = _gather(missing, size)
    if rank == 0:
        what = "" if speed == 100 else f" (speed {speed} %)"
        what += " (corrupted copies)" if copies is not None else ""
        logger.info(
            "Feature cache%s: %d entries, %d encoded by %d processes: %s",
            what,
            len(items),
            sum(counts),
            size,
            ", ".join(f"rank {r} {n}" for r, n in enumerate(counts)),
        )
    ddp_barrier()


def fill_cache(cache, utterances: dict[str, dict], **kwargs) -> dict[str, Path]:
    """Compute every missing entry of ``utterances``, shared between the DDP processes;
    ``{utterance_id: entry path}`` in every process.

    ``kwargs`` are those of :meth:`~qieemo_lobes.features.FeatureCache.precompute` (``speed``,
    ``copies``, ``batch_seconds``). Without DDP this is ``cache.precompute(utterances,
    **kwargs)``. Under DDP every process encodes its share (:func:`precompute_shared`) and waits
    for the others; then each asks for every entry (all present: paths only, and the cache
    learns where each entry comes from, to recompute a damaged one).
    """
    if world()[1] == 1:
        return cache.precompute(utterances, **kwargs)
    precompute_shared(cache.precompute, kwargs={"utterances": utterances, **kwargs})
    return cache.precompute(utterances, **{**kwargs, "progress": False})


def environment_shard(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(rank, world size)`` that a launcher (``torchrun``) set in the environment
    (``RANK``, ``WORLD_SIZE``), or None when they are not both set.

    Example
    -------
    >>> environment_shard({"RANK": "1", "WORLD_SIZE": "4"}), environment_shard({})
    ((1, 4), None)
    """
    environ = os.environ if environ is None else environ
    rank, size = environ.get("RANK"), environ.get("WORLD_SIZE")
    if rank is None or size is None:
        return None
    if not (rank.strip().isdigit() and size.strip().isdigit()):
        raise ValueError(f"RANK={rank!r} and WORLD_SIZE={size!r} are not whole numbers")
    rank_, size_ = int(rank), int(size)
    if not 0 <= rank_ < size_:
        raise ValueError(f"RANK={rank_} outside 0..{size_ - 1} (WORLD_SIZE={size_})")
    return rank_, size_
