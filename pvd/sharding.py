"""Many processes for many videos: `torchrun --nproc_per_node N -m pvd deblur|eval ...` shards the videos.

    ctx = current()                      # rank, world size, local rank from the environment torchrun sets
    mine = shard(videos, key=name)       # this rank's share: sorted by name, every world-th one
    device = rank_device(device)         # cuda:LOCAL_RANK under torchrun on GPUs
    with process_group():                # gloo (CPU) / nccl (CUDA) only when WORLD_SIZE > 1
        everything = gather(mine_result) # [result of rank 0, rank 1, ...] (all_gather_object)

Sharding is deterministic: the videos are sorted by name (naturally: `2` before `10`) and rank r takes the
r-th, (r+N)-th, ... ones, so every rank computes the same split without talking. A single process (no
WORLD_SIZE, or 1) takes every video and never initialises torch.distributed.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from ._files import natural_key

T = TypeVar("T")
# Ranks meet only at the end (eval gathers its scores), after scoring videos of different lengths: wait long.
GATHER_TIMEOUT = datetime.timedelta(hours=24)


@dataclass(frozen=True)
class Context:
    """rank: this process (0..world_size-1); world_size: processes; local_rank: the process on this machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def current() -> Context:
    """The rank layout torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK); a single process without them.
    ValueError for an inconsistent environment."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return Context(rank, world, local)


def shard(items: Sequence[T], key: Callable[[T], str], context: Context | None = None) -> list[T]:
    """This rank's share of `items`: sorted naturally by `key`, every world_size-th item from the rank's own.
    ValueError when two items share a key (their outputs would collide)."""
    context = current() if context is None else context
    keys = [key(item) for item in items]
    if len(set(keys)) != len(keys):
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"videos share the name(s) {', '.join(duplicates)}: their outputs would collide")
    ordered = sorted(items, key=lambda item: natural_key(key(item)))
    return ordered[context.rank::context.world_size]


def rank_device(device: torch.device, context: Context | None = None) -> torch.device:
    """`device`, or cuda:LOCAL_RANK for a CUDA device when several processes run (one GPU per process)."""
    context = current() if context is None else context
    if device.type == "cuda" and context.distributed and device.index is None:
        count = torch.cuda.device_count()
        if context.local_rank >= count:
            raise ValueError(f"LOCAL_RANK {context.local_rank} has no GPU: this machine has {count}")
        return torch.device("cuda", context.local_rank)
    return device


@contextmanager
def process_group(device: torch.device | None = None) -> Iterator[Context]:
    """Initialise torch.distributed (nccl for CUDA devices, else gloo) when WORLD_SIZE > 1 and none is up;
    destroy it on exit if this call made it. Yields the Context."""
    context = current()
    created = False
    if context.distributed and not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size,
                                timeout=GATHER_TIMEOUT)
        created = True
    try:
        yield context
    finally:
        if created:
            dist.destroy_process_group()


def gather(value, context: Context | None = None) -> list:
    """[value of rank 0, value of rank 1, ...] on every rank (`all_gather_object`); [value] for one process."""
    context = current() if context is None else context
    if not context.distributed:
        return [value]
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def merge_by_name(parts: Sequence[dict], order: Sequence[str]) -> dict:
    """Per-rank {name: value} dicts -> one dict in `order` (names no rank produced are left out)."""
    merged = {}
    for part in parts:
        merged.update(part)
    return {name: merged[name] for name in order if name in merged}
