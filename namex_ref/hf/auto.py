"""``AutoModelForCausalLM.from_pretrained(DIR)`` for converted models, without
``trust_remote_code``: transformers' documented registration of custom configs and models
(``AutoConfig.register``, ``AutoModelForCausalLM.register``), done by :func:`register` when
:mod:`namex_ref.hf` is imported (if transformers is installed).

For each family F of :data:`namex_ref.hf.families.FAMILIES` there is a config class
``Namex<F config>`` with ``model_type = "namex_<F>"`` (a subclass of F's config: every field of
the original model is kept) and a causal-LM class ``Namex<F>ForCausalLM`` whose constructor
builds F's model and converts it with the options stored in the config's ``namex`` field.
:func:`mark_converted` turns a converted model's config into that config class in place, so
``model.save_pretrained(DIR)`` writes a folder from_pretrained reads back with the same parameters.
The model class is built on first use (a light proxy is registered), so importing
:mod:`namex_ref.hf` loads only the configuration modules of the families.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from namex_ref.hf.extra import require_transformers
from namex_ref.hf.families import FAMILIES

__all__ = ["CONFIG_FIELD", "mark_converted", "model_type", "register"]

CONFIG_FIELD = "namex"
"""The config field holding :func:`namex_ref.hf.convert`'s options of a converted model."""

# family → (config class, causal LM class) in transformers 5.x
_CLASSES = {
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM"),
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM"),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM"),
    "glm4_moe": ("Glm4MoeConfig", "Glm4MoeForCausalLM"),
}


def model_type(family: str) -> str:
    """The ``model_type`` of a converted model of ``family``: ``"namex_" + family``."""
    return f"namex_{family}"


@cache
def _config_class(family: str) -> type:
    transformers = require_transformers()
    base = getattr(transformers, _CLASSES[family][0])
    return type(f"Namex{base.__name__}", (base,), {
        "model_type": model_type(family), "__module__": __name__,
        "__doc__": f"{base.__name__} of a model converted by namex_ref.hf.convert (options in "
                   f"``{CONFIG_FIELD}``).",
    })


@cache
def _model_class(family: str) -> Any:
    transformers = require_transformers()
    base = getattr(transformers, _CLASSES[family][1])

    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        from namex_ref.hf.convert import convert

        base.__init__(self, config, *args, **kwargs)
        options = dict(getattr(config, CONFIG_FIELD))
        build = dict(options)
        if next(self.parameters()).device.type == "meta" and build.get("base_init") != "expert0":
            build["base_rule"] = "zero"  # from_pretrained: the base is loaded, not formed
        convert(self, **build)
        self.__dict__["namex_options"] = options
        setattr(config, CONFIG_FIELD, options)  # the recorded rule, not the loading shortcut

    return type(f"Namex{base.__name__}", (base,), {
        "config_class": _config_class(family), "__init__": __init__, "__module__": __name__,
        "__doc__": f"{base.__name__} converted by namex_ref.hf.convert on construction.",
    })


class _LazyModel:
    """Registered in place of the model class; builds it on first use."""

    family = ""
    config_class: type = object

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        return _model_class(cls.family).from_pretrained(*args, **kwargs)

    @classmethod
    def _from_config(cls, config: Any, **kwargs: Any) -> Any:
        return _model_class(cls.family)._from_config(config, **kwargs)


@cache
def register() -> None:
    """Register every family's converted config and model with transformers' Auto classes
    (idempotent). Raises :class:`~namex_ref.hf.extra.MissingExtraError` without transformers."""
    transformers = require_transformers()
    for family in sorted(set(FAMILIES.values())):
        cfg = _config_class(family)
        transformers.AutoConfig.register(model_type(family), cfg, exist_ok=True)
        proxy = type(f"NamexLazy{family}", (_LazyModel,), {"family": family, "config_class": cfg})
        transformers.AutoModelForCausalLM.register(cfg, proxy, exist_ok=True)


def mark_converted(model: Any, family: str, options: dict[str, Any]) -> None:
    """Make ``model.config`` (shared with its submodules, so changed in place) the converted
    config class of ``family`` with ``options`` in :data:`CONFIG_FIELD`: ``save_pretrained``
    then writes ``model_type = "namex_<family>"`` and the options."""
    register()
    config = getattr(model, "config", None)
    if config is None:
        return
    config.__class__ = _config_class(family)
    setattr(config, CONFIG_FIELD, dict(options))
