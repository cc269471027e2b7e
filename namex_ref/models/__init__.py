"""Models built from the merging layers."""

from namex_ref.models.gpt import PRESETS, ModelConfig, ModelOutput, MoEGPT, count_parameters, preset

__all__ = ["PRESETS", "MoEGPT", "ModelConfig", "ModelOutput", "count_parameters", "preset"]
