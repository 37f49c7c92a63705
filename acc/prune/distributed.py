"""Where this process sits in a multi-process training run (torch.distributed), and the few
collectives the training loop needs.

acc runs as one process, or as one rank of a job started by `torchrun --nproc-per-node N` (or by
`--devices`, which spawns the ranks itself: acc.prune.launch). The environment says which:
WORLD_SIZE, RANK and LOCAL_RANK as torchrun sets them. Backends: NCCL when the rank trains on a
GPU, gloo on the CPU.

What runs where:
- every rank: ADMM and fine-tuning (DistributedDataParallel; each global batch is drawn the same
  on every rank and each rank takes its slice), the Z-projection, hard masks and near-zero
  purification (computed from the same weights, so identical), evaluation (sharded, all-reduced);
- rank 0 only: the search (its result is broadcast), the rewrite and verification, checkpoints,
  models and reports. The others wait at a barrier.

The single-process run is the same code with a World of size 1: every collective is a no-op.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from acc.data.shard import global_batches
from acc.errors import InputError

# The search runs on rank 0 while the other ranks wait in a collective: allow it hours.
WAIT_MINUTES = float(os.environ.get("ACC_DIST_TIMEOUT_MIN", 24 * 60))
DEVICES_ENV = "ACC_DEVICES"  # set by acc.prune.launch: the device of each local rank, comma-separated


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        """(rank, size) for the data's `batches(shard=...)`; None when there is one process."""
        return None if self.size == 1 else (self.rank, self.size)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's `obj`, on every rank (picklable objects)."""
        if self.size == 1:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks (float64, so the order of ranks barely matters)."""
        if self.size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


_WORLD: World | None = None


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError(f"WORLD_SIZE must be a number, got {os.environ['WORLD_SIZE']!r}") from None


def rank_device(requested: str) -> str:
    """The torch device this rank trains on: its entry of --devices, cuda:LOCAL_RANK under
    torchrun with --device cuda, else what was asked."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    listed = os.environ.get(DEVICES_ENV)
    if listed:
        devices = listed.split(",")
        return devices[local_rank % len(devices)]
    if env_world_size() > 1 and requested == "cuda":
        return f"cuda:{local_rank}"
    return requested


def setup(device: str = "cpu") -> World:
    """Join the process group the environment describes (once per process); a World of 1 if none."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    size = env_world_size()
    if size <= 1:
        _WORLD = World()
        return _WORLD
    torch_device = torch.device(rank_device(device))
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    elif "OMP_NUM_THREADS" not in os.environ:
        # CPU ranks share the machine's cores: more threads than cores in all makes every rank slower.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=WAIT_MINUTES))
        atexit.register(_teardown)
    _WORLD = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), backend)
    return _WORLD


def current() -> World:
    """The World set up by `setup` (one process if nobody called it)."""
    return _WORLD if _WORLD is not None else World()


TEARDOWN_WAIT = timedelta(seconds=30)


def _teardown() -> None:
    """Leave the process group together: a gloo rank that destroyed its group while its peer's
    background thread still talked to it died with SIGABRT at exit ("terminate called without an
    active exception", once in a CI run). The barrier is bounded, so a rank whose peer is gone
    still exits."""
    if not dist.is_initialized():
        return
    if dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=TEARDOWN_WAIT)
        except Exception:  # noqa: BLE001 - a peer that already failed or left: nothing to wait for
            pass
    dist.destroy_process_group()


def shard_steps(count: int, batch_size: int, world_size: int) -> int:
    """Global batches per epoch (at least 1, for schedules): a trailing batch too small to give
    every rank a row is skipped by every rank (acc.data.shard)."""
    return max(global_batches(count, batch_size, world_size), 1)


def global_batch_len(step: int, count: int, batch_size: int) -> int:
    """Rows in global batch `step` of an epoch over `count` items."""
    return min(batch_size, count - step * batch_size)


def wrap(module: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The module to train with: DistributedDataParallel across the ranks, or itself. On GPUs
    BatchNorm becomes SyncBatchNorm, so batch statistics are those of the global batch, as in
    one process (SyncBatchNorm needs a GPU; on CPU each rank normalises over its own slice)."""
    if world.size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, device_ids=[device])
    return DistributedDataParallel(module)
