"""Cached decoding of a converted model (docs/math.md §6, "Cached decoding of a converted model").

With a KV cache transformers feeds only the new tokens, which do not contain the previous segment
that S13's causal scores need. Each converted block therefore keeps a :class:`SegmentState` per
cache object (the scores of the current segment and its block inputs so far); the model's
forward hooks hand it over (:func:`decode_states`) and record the next one
(:func:`record_states`). A cache reordered, cropped or filled elsewhere is refused.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from namex_ref.merging.config import MergeConfig

__all__ = ["CacheEntry", "SegmentState", "cache_registry", "decode_states", "first_keys",
           "record_states"]


@dataclass
class SegmentState:
    """Causal segment routing of one block after its first ``offset`` tokens (cached decoding).

    tail: (B, offset mod S, H) the block inputs of the current, still partial segment;
    scores: (B, 1, N) the scores of segment ⌊offset / S⌋ (from the mean of the segment before
    it, uniform for segment 0), after ``merge_top_k``. Detached: decoding state, no gradient.
    """

    offset: int
    tail: Tensor
    scores: Tensor


@dataclass
class CacheEntry:
    """The blocks' segment states that belong to one transformers cache object, the cache
    length they were recorded at, and a weak reference to the cache's first key tensor then
    (a new tensor there means the cache was reordered or rebuilt outside this model)."""

    states: list[SegmentState]
    offset: int
    keys: weakref.ReferenceType[Tensor] | None



def first_keys(cache: Any) -> Tensor | None:
    """The key tensor of the cache's first layer (transformers 5.x ``Cache.layers``), if any."""
    layers = getattr(cache, "layers", None)
    keys = getattr(layers[0], "keys", None) if layers else None
    return keys if isinstance(keys, Tensor) else None


def cache_registry(model: nn.Module) -> weakref.WeakKeyDictionary[Any, CacheEntry]:
    """The segment states of ``model`` per transformers cache object (weak keys: a cache that is
    dropped takes its entry with it), made on first use."""
    reg: weakref.WeakKeyDictionary[Any, CacheEntry] | None = model.__dict__.get("namex_caches")
    if reg is None:
        reg = weakref.WeakKeyDictionary()
        model.__dict__["namex_caches"] = reg
    return reg


def decode_states(
    model: nn.Module, n_blocks: int, config: MergeConfig, args: Any, kwargs: dict[str, Any]
) -> tuple[int, list[SegmentState | None]] | None:
    """The cache offset of this forward call of ``model`` (args, kwargs) and the segment state
    of each of its ``n_blocks`` converted blocks (merging ``config``), or None when no cache is
    used; refuses a non-empty cache the blocks cannot continue exactly."""
    try:
        bound = inspect.signature(model.forward).bind_partial(*args, **kwargs).arguments
    except TypeError:  # let the model's own forward report the bad call
        bound = kwargs
    cache = bound.get("past_key_values")
    use_cache = bound.get("use_cache")
    if use_cache is None:
        use_cache = getattr(getattr(model, "config", None), "use_cache", False)
    if cache is None and not use_cache:
        return None
    past = 0
    if cache is not None:
        length = getattr(cache, "get_seq_length", None)
        if length is None:
            raise ValueError(
                f"past_key_values of type {type(cache).__name__} is not a transformers Cache; "
                "pass a Cache (e.g. DynamicCache) or use_cache=False"
            )
        past = int(length())
    if past == 0:
        return (0, [None] * n_blocks) if config.routing == "segment" else None
    method = config.method
    if config.router_per_matrix:
        raise ValueError(
            f"method {method!r} with router_per_matrix=True cannot continue from a non-empty "
            "past_key_values (W_down's router reads the previous segment's hidden activations, "
            "which the segment state does not keep); call the model on the whole sequence "
            "with use_cache=False"
        )
    if config.routing != "segment":
        raise ValueError(
            f"method {method!r} with routing='sequence' cannot continue from a non-empty "
            "past_key_values (every token's scores use the whole sequence's mean); call the "
            "model on the whole sequence with use_cache=False"
        )
    entry = cache_registry(model).get(cache)
    if entry is None:
        raise ValueError(
            f"past_key_values holds {past} tokens that this converted model did not process "
            f"itself; method {method!r} needs its own segment state for them (docs/math.md §6, "
            "cached decoding): start from an empty cache, or pass use_cache=False"
        )
    if entry.offset != past or (entry.keys is not None and entry.keys() is not first_keys(cache)):
        raise ValueError(
            f"past_key_values was changed outside this model's forward (cropped, reordered for "
            f"beam search, or otherwise rebuilt: {past} tokens, {entry.offset} when this "
            f"model last wrote it); method {method!r} cannot continue it exactly. Use "
            "num_beams=1 without assistant or contrastive decoding, or use_cache=False"
        )
    return past, list(entry.states)



def record_states(model: nn.Module, states: list[SegmentState | None], output: Any) -> None:
    """After a forward of ``model``: keep the blocks' segment ``states`` with the cache of
    ``output`` (its ``past_key_values``), when every block made one and they are in step with
    the cache length; otherwise nothing is kept."""
    cache = getattr(output, "past_key_values", None)
    if cache is None or any(st is None for st in states):
        return
    offset = int(cache.get_seq_length())
    if any(st is not None and st.offset != offset for st in states):
        return  # not a cache this model filled in step with its blocks: nothing to continue
    keys = first_keys(cache)
    cache_registry(model)[cache] = CacheEntry(
        [st for st in states if st is not None], offset,
        None if keys is None else weakref.ref(keys),
    )
