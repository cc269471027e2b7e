"""Checkpoints as one safetensors file, written atomically (temporary file + ``os.replace``),
checksummed, with the previous checkpoint kept beside the latest.

Tensors: ``model.<name>`` (tied parameters stored once; the aliases are listed in the metadata),
``optim.<param index>.<key>`` (tensor entries of the optimizer state) and ``rng.torch`` /
``rng.cuda.<i>`` (generator states). Metadata (strings): the format tag, ``step``, the
:class:`TrainConfig` as JSON, the optimizer's non-tensor parts (param groups, scalar state) as
JSON, the model aliases, the cumulative training counters, Python's ``random`` state and
``checksum``.

Checksum (format v2): ``"sha256:" + hexdigest`` of, for every tensor name in sorted order, the
name's UTF-8 bytes, a zero byte and the tensor's raw little-endian bytes as stored, then for every
other metadata key in sorted order, the key, a zero byte, the value and a zero byte. It covers
every byte of data and metadata, so any flipped byte is caught by :func:`load_checkpoint` (as
:class:`CorruptCheckpointError`, naming the file) or by the safetensors parser. Checkpoints of
format v1 (no checksum, written before this change) still load; ``Checkpoint.verified`` is then
``False`` and the training loop says so.

Previous checkpoint: ``save_checkpoint(..., previous=PATH)`` first renames the existing file to
``PATH``, then renames the new one into place, so a run always has the last two checkpoints and
a kill between the two renames leaves the previous one (see :mod:`namex_ref.train.loop`).
A checkpoint is never written from a non-finite state (``ValueError`` naming the tensor).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "LEGACY_FORMATS",
    "Checkpoint",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
    "tensor_checksum",
]

CHECKPOINT_FORMAT = "namex-train-ckpt-v2"
"""Format tag written in the metadata (v2: with ``checksum``)."""

LEGACY_FORMATS: frozenset[str] = frozenset({"namex-train-ckpt-v1"})
"""Older formats that still load (without a checksum to verify)."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file fails its checksum or cannot be parsed; the message names the file."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (for example a full disk); the previous one is intact."""


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
    verified: bool = True
    """Whether a checksum was stored and matched (``False`` only for legacy v1 files)."""
    rng_device: list[Tensor] = field(default_factory=list)
    """Each DDP rank's own device generator, indexed by rank (CUDA runs; empty on CPU)."""


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


def _raw_bytes(t: Tensor) -> memoryview:
    """The bytes safetensors stores for ``t`` (contiguous, native little-endian order)."""
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data


def tensor_checksum(tensors: dict[str, Tensor], metadata: dict[str, str]) -> str:
    """The checksum stored as ``metadata["checksum"]`` (algorithm in the module docstring);
    the ``checksum`` key itself is left out of the digest."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode("utf-8") + b"\0")
        h.update(_raw_bytes(tensors[name]))
    for key in sorted(metadata):
        if key != "checksum":
            h.update(key.encode("utf-8") + b"\0" + metadata[key].encode("utf-8") + b"\0")
    return "sha256:" + h.hexdigest()


def _require_finite(tensors: dict[str, Tensor]) -> None:
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"refusing to write a checkpoint from a non-finite state: tensor {name!r} "
                f"holds NaN or infinity"
            )


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, target: Path, previous: Path | None) -> None:
    """Move the finished temporary file into place, keeping the old one as ``previous``."""
    if previous is not None and target.is_file():
        os.replace(target, previous)
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: dict[str, Any],
    counters: dict[str, Any] | None = None,
    previous: str | os.PathLike[str] | None = None,
    device_rng: Sequence[Tensor] = (),
) -> Path:
    """Write a checkpoint to ``path`` atomically: a reader sees the old file or the new one,
    never a partial one; no temporary file is left behind, even on error.

    previous: where the existing checkpoint at ``path`` (if any) is moved before the new one
        takes its place (the loop keeps the last two checkpoints this way).
    device_rng: every rank's device generator state, by rank
        (:meth:`~namex_ref.train.distributed.Distributed.device_rng_states`); rank r resumes
        from entry r (:func:`restore_rng`).

    Raises:
        ValueError: a model or optimizer tensor is not finite (nothing is written).
        CheckpointWriteError: the file system refused the write (for example ``ENOSPC``); the
            temporary file is removed and the checkpoint at ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    model_t, aliases = _model_tensors(model)
    optim_t, optim_meta = _optim_tensors(optimizer)
    tensors: dict[str, Tensor] = {**model_t, **optim_t}
    _require_finite(tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    for r, state in enumerate(device_rng):
        tensors[f"rng.device.{r}"] = state.cpu()
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "step": str(step),
        "config": json.dumps(config, sort_keys=True),
        "optim": json.dumps(optim_meta),
        "aliases": json.dumps(aliases, sort_keys=True),
        "counters": json.dumps(counters or {}, sort_keys=True),
        "python_rng": json.dumps(random.getstate()),
    }
    metadata["checksum"] = tensor_checksum(tensors, metadata)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        _publish(Path(tmp), target, None if previous is None else Path(previous))
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointWriteError(
            f"could not write the checkpoint of step {step} to {str(target)!r}: {exc}; the "
            f"previous checkpoint is left as it was (free some space, then continue with "
            f"--resume)"
        ) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    The stored checksum is recomputed from the tensors and metadata read back.

    Raises:
        FileNotFoundError: no file at ``path``.
        CorruptCheckpointError: the file cannot be parsed or fails its checksum (a
            ``ValueError``; the message names the file).
        ValueError: the file is not a checkpoint of a known format.
    """
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(target)!r}")
    try:
        return _load(target)
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError, KeyError) as exc:
        raise CorruptCheckpointError(
            f"{str(target)!r} is not a readable checkpoint (corrupt or torn file): {exc}"
        ) from exc


def _load(target: Path) -> Checkpoint:
    model_state: dict[str, Tensor] = {}
    optim_tensors: dict[str, dict[str, Tensor]] = {}
    rng_cuda: dict[int, Tensor] = {}
    rng_device: dict[int, Tensor] = {}
    rng_torch: Tensor | None = None
    every: dict[str, Tensor] = {}
    with safe_open(str(target), framework="pt") as f:
        meta = f.metadata() or {}
        fmt = meta.get("format")
        if fmt != CHECKPOINT_FORMAT and fmt not in LEGACY_FORMATS:
            raise ValueError(
                f"{str(target)!r} is not a {CHECKPOINT_FORMAT} checkpoint (format {fmt!r})"
            )
        for key in f.keys():
            t = f.get_tensor(key)
            every[key] = t
            if key.startswith("model."):
                model_state[key[len("model."):]] = t
            elif key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                optim_tensors.setdefault(idx, {})[name] = t
            elif key == "rng.torch":
                rng_torch = t
            elif key.startswith("rng.cuda."):
                rng_cuda[int(key.rsplit(".", 1)[1])] = t
            elif key.startswith("rng.device."):
                rng_device[int(key.rsplit(".", 1)[1])] = t
    verified = fmt == CHECKPOINT_FORMAT
    if verified:
        stored = meta.get("checksum", "")
        actual = tensor_checksum(every, meta)
        if stored != actual:
            raise CorruptCheckpointError(
                f"{str(target)!r} is corrupt: its checksum does not match its contents "
                f"(stored {stored[:19]}..., computed {actual[:19]}...)"
            )
    if rng_torch is None:
        raise CorruptCheckpointError(f"{str(target)!r} lacks the torch RNG state")
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
        rng_device=[rng_device[i] for i in sorted(rng_device)],
        python_rng=_tuplify(json.loads(meta["python_rng"])),
        counters=json.loads(meta["counters"]),
        verified=verified,
    )


def restore_rng(ckpt: Checkpoint, device: torch.device | None = None, rank: int = 0) -> None:
    """Set the torch (CPU and, when saved and present, CUDA) and Python RNG states.

    With ``device`` a CUDA device and per-rank states saved (``rng_device``), this rank's
    device generator gets entry ``rank``: the state that rank itself had. Checkpoints from
    before per-rank states restore ``rng_cuda[i]`` into GPU i, as written by rank 0; exact for
    one process, not for ranks ≥ 1 of a multi-GPU run (rank 0 never advanced their GPUs).
    """
    torch.set_rng_state(ckpt.rng_torch)
    if device is not None and device.type == "cuda" and len(ckpt.rng_device) > rank:
        torch.cuda.set_rng_state(ckpt.rng_device[rank], device)
    elif ckpt.rng_cuda and torch.cuda.is_available():
        n = min(len(ckpt.rng_cuda), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(ckpt.rng_cuda[i], i)
    random.setstate(ckpt.python_rng)
