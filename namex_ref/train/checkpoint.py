"""Checkpoints as one safetensors file, written atomically (temporary file + ``os.replace``).

Tensors: ``model.<name>`` (tied parameters stored once; the aliases are listed in the metadata),
``optim.<param index>.<key>`` (tensor entries of the optimizer state) and ``rng.torch`` /
``rng.cuda.<i>`` (generator states). Metadata (strings): the format tag, ``step``, the
:class:`TrainConfig` as JSON, the optimizer's non-tensor parts (param groups, scalar state) as
JSON, the model aliases, the cumulative training counters and Python's ``random`` state.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "namex-train-ckpt-v1"


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` returns (tensors on CPU)."""

    step: int
    config: dict[str, Any]
    model_state: dict[str, Tensor]
    optim_state: dict[str, Any]
    rng_torch: Tensor
    rng_cuda: list[Tensor]
    python_rng: Any
    counters: dict[str, Any]


def _model_tensors(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """State dict with exact aliases (tied weights) stored once: (tensors, alias -> canonical)."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...], int], str] = {}
    for name, t in model.state_dict().items():
        ident = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.storage_offset())
        if t.numel() and ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        tensors[f"model.{name}"] = t.detach().to("cpu", copy=True).contiguous()
    return tensors, aliases


def _optim_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state split into tensors and a JSON-able remainder."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: dict[str, Any],
    counters: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint to ``path`` atomically: a reader sees the old file or the new one,
    never a partial one; no temporary file is left behind, even on error."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    model_t, aliases = _model_tensors(model)
    optim_t, optim_meta = _optim_tensors(optimizer)
    tensors: dict[str, Tensor] = {**model_t, **optim_t}
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "step": str(step),
        "config": json.dumps(config, sort_keys=True),
        "optim": json.dumps(optim_meta),
        "aliases": json.dumps(aliases, sort_keys=True),
        "counters": json.dumps(counters or {}, sort_keys=True),
        "python_rng": json.dumps(random.getstate()),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a checkpoint of this format.
    """
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(target)!r}")
    try:
        return _load(target)
    except SafetensorError as exc:
        raise ValueError(f"{str(target)!r} is not a readable checkpoint: {exc}") from exc


def _load(target: Path) -> Checkpoint:
    model_state: dict[str, Tensor] = {}
    optim_tensors: dict[str, dict[str, Tensor]] = {}
    rng_cuda: dict[int, Tensor] = {}
    rng_torch: Tensor | None = None
    with safe_open(str(target), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"{str(target)!r} is not a {CHECKPOINT_FORMAT} checkpoint "
                f"(format {meta.get('format')!r})"
            )
        for key in f.keys():
            t = f.get_tensor(key)
            if key.startswith("model."):
                model_state[key[len("model."):]] = t
            elif key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                optim_tensors.setdefault(idx, {})[name] = t
            elif key == "rng.torch":
                rng_torch = t
            elif key.startswith("rng.cuda."):
                rng_cuda[int(key.rsplit(".", 1)[1])] = t
    if rng_torch is None:
        raise ValueError(f"{str(target)!r} lacks the torch RNG state")
    for alias, canonical in json.loads(meta["aliases"]).items():
        model_state[alias] = model_state[canonical]
    optim_meta = json.loads(meta["optim"])
    state: dict[int, dict[str, Any]] = {}
    for idx, tensors in optim_tensors.items():
        state[int(idx)] = dict(tensors)
    for idx, scalars in optim_meta["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    groups = optim_meta["param_groups"]
    for g in groups:  # JSON turned tuples (betas) into lists
        for k, v in list(g.items()):
            if k != "params":
                g[k] = _tuplify(v)
    return Checkpoint(
        step=int(meta["step"]),
        config=json.loads(meta["config"]),
        model_state=model_state,
        optim_state={"state": state, "param_groups": groups},
        rng_torch=rng_torch,
        rng_cuda=[rng_cuda[i] for i in sorted(rng_cuda)],
        python_rng=_tuplify(json.loads(meta["python_rng"])),
        counters=json.loads(meta["counters"]),
    )


def restore_rng(ckpt: Checkpoint) -> None:
    """Set the torch (CPU and, when saved and present, CUDA) and Python RNG states."""
    torch.set_rng_state(ckpt.rng_torch)
    if ckpt.rng_cuda and torch.cuda.is_available():
        n = min(len(ckpt.rng_cuda), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(ckpt.rng_cuda[i], i)
    random.setstate(ckpt.python_rng)
