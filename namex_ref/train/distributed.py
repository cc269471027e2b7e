"""Where a training process runs: its device and, under ``torchrun``, its rank.

Run the same entry point under ``torchrun --nproc_per_node=W``; :func:`setup_distributed` reads
the torchrun environment (``WORLD_SIZE``, ``LOCAL_RANK``) and creates the process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Distributed", "resolve_device", "setup_distributed"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"cpu", "cuda" or "auto" (cuda when available) as a torch device (cuda:local_rank)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda requested but CUDA is not available")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"--device must be cpu, cuda or auto, got {name!r}")
    return torch.device("cpu")


@dataclass
class Distributed:
    """This process's place in the run: rank of world, local rank (its GPU), and whether it
    created the process group (then :func:`namex_ref.train.train` destroys it at the end)."""


    rank: int
    world: int
    local_rank: int
    owns_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def device_rng_states(self, device: torch.device) -> list[torch.Tensor]:
        """Every rank's generator state of its own device, indexed by rank (a collective: all
        ranks call it). Empty on the CPU, whose generator every rank shares (all ranks draw
        the same global batch). Each rank's GPU draws its own dropout, noise and DARE masks,
        so a resumed run is exact only if rank r gets back rank r's state."""
        if device.type != "cuda":
            return []
        mine = torch.cuda.get_rng_state(device)
        if self.world == 1:
            return [mine]
        states: list[object] = [None] * self.world
        dist.all_gather_object(states, mine)  # one host round-trip, at checkpoint steps only
        return [s for s in states if isinstance(s, torch.Tensor)]


def setup_distributed(device_name: str) -> Distributed:
    """One process (WORLD_SIZE unset or 1), or this rank of a torchrun launch: the process group
    is created here (nccl for CUDA, gloo on CPU) unless the caller already created one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(0, 1, 0, owns_group=False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=owns)
