"""Where a run's model comes from: a :class:`ModelBuilder` handed to
:func:`namex_ref.train.train`.

The loop needs a model that takes ``(idx, targets, collect_stats=...)`` and returns a
:class:`~namex_ref.models.gpt.ModelOutput`, with a
:class:`~namex_ref.models.gpt.ModelConfig` as ``model.config`` (:func:`model_config_of`).
:data:`GPT_BUILDER` (the default) builds the GPT presets; the Hugging Face package provides
another (``namex_ref.hf.training.HF_BUILDER``) for ``TrainConfig(hf_model=DIR)`` runs, so this
package never imports the one above it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from namex_ref.models.gpt import ModelConfig, MoEGPT
from namex_ref.train.config import TrainConfig, flag_name

__all__ = ["GPT_BUILDER", "ModelBuilder", "build_gpt", "describe_gpt", "model_config_of"]


@dataclass(frozen=True)
class ModelBuilder:
    """How a run gets its model (module-level functions, so that it pickles for the worker
    processes of ``compare(jobs > 1)``).

    build: the model of ``config``, on the CPU, initialised from the current torch seed (the
        loop seeds with ``config.seed`` first).
    describe: what the run trains, for the announcement ("preset tiny", "model 'DIR'").
    export: called on rank 0 after the final evaluation with (model, config, run folder);
        writes what the builder adds to a finished run and returns a note for the list of
        files written ("" = nothing).
    """

    build: Callable[[TrainConfig], nn.Module]
    describe: Callable[[TrainConfig], str]
    export: Callable[[nn.Module, TrainConfig, Path], str] | None = None


def build_gpt(config: TrainConfig) -> nn.Module:
    """:class:`~namex_ref.models.gpt.MoEGPT` of ``config.model_config()``.

    Raises:
        ValueError: ``config.hf_model`` is set (that run needs the Hugging Face builder).
    """
    if config.hf_model:
        raise ValueError(
            f"{flag_name('hf_model')}: this run was handed the GPT model builder, which builds "
            f"the GPT presets only; train a Hugging Face model with "
            f"namex_ref.hf.training.train(config) (CLI: namex train --hf-model DIR)"
        )
    return MoEGPT(config.model_config())


def describe_gpt(config: TrainConfig) -> str:
    """"preset NAME" (the run's announcement)."""
    return f"preset {config.preset}"


GPT_BUILDER = ModelBuilder(build=build_gpt, describe=describe_gpt)
"""The default builder: the GPT preset of ``config.preset`` with ``config.method``."""


def model_config_of(model: nn.Module) -> ModelConfig:
    """The :class:`~namex_ref.models.gpt.ModelConfig` of a model from a :class:`ModelBuilder`."""
    cfg = model.__dict__.get("config")
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"{type(model).__name__} has no ModelConfig 'config'")
    return cfg
