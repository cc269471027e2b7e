"""Where a training process runs: its device and, under ``torchrun``, its rank.

Run the same entry point under ``torchrun --nproc_per_node=W``; :func:`setup_distributed` reads
the torchrun environment (``WORLD_SIZE``, ``LOCAL_RANK``) and creates the process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DEVICE_HELP",
    "Distributed",
    "check_device_name",
    "resolve_device",
    "setup_distributed",
]


DEVICE_HELP = (
    "auto (the first visible GPU when there is one, else cpu), cpu, cuda (GPU 0, or GPU "
    "LOCAL_RANK under torchrun) or cuda:N (GPU N of those CUDA_VISIBLE_DEVICES shows)"
)
"""What ``--device`` accepts (the help text of every command that takes it)."""


def check_device_name(name: str) -> str:
    """``name`` if it spells a device ``--device`` accepts (``auto``, ``cpu``, ``cuda``,
    ``cuda:N`` with N ≥ 0), else ``ValueError`` naming the accepted forms. Syntax only: whether
    the device is present is :func:`resolve_device`'s question."""
    if name in ("auto", "cpu", "cuda"):
        return name
    head, _, index = name.partition(":")
    if head == "cuda" and index.isdigit() and index.isascii():
        return name
    raise ValueError(f"--device: {name!r} is not a device; choose {DEVICE_HELP}")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device of ``--device name``, checked against the devices present.

    "auto": cuda:local_rank when CUDA is available, else cpu. "cuda": cuda:local_rank.
    "cuda:N": GPU N, refused under torchrun (each rank takes GPU LOCAL_RANK there; choose the
    GPUs with CUDA_VISIBLE_DEVICES). Raises ``ValueError`` with one line that says what is
    present and what to do.
    """
    check_device_name(name)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: CUDA is not available here (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}); use --device cpu or auto"
        )
    count = torch.cuda.device_count()
    if name.startswith("cuda:"):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(
                f"--device {name}: under torchrun each rank uses GPU LOCAL_RANK; pass --device "
                f"cuda and choose the GPUs with CUDA_VISIBLE_DEVICES"
            )
        index = int(name[5:])
    else:
        index = local_rank
    if index >= count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        raise ValueError(
            f"--device {name}: GPU {index} does not exist; {count} visible GPU(s), cuda:0 to "
            f"cuda:{count - 1} (CUDA_VISIBLE_DEVICES={visible})"
        )
    return torch.device("cuda", index)


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
        use_cuda = device_name.startswith("cuda") or (
            device_name == "auto" and torch.cuda.is_available()
        )
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=owns)
