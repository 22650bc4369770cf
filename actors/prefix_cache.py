"""Shared-prefix reuse for the transformers engine: prefill the tokens a batch has in common once.

Every row of an LLM stage renders the same prompt file: system message, instructions and
few-shot examples come first and are the same tokens for every row; only the row's own text
(a passage, a question) differs, yet each row recomputed them all. :class:`PrefixCache` keeps
the key/value states of recent shared prefixes (a few entries, least recently used dropped), so
a batch pays only for the tokens after its prefix.

The arithmetic is exact: a causal model's states at positions ``0..P-1`` depend only on those
tokens, so computing them once and attending to them from each row (at the same positions)
equals computing the whole prompt per row. What changes is the floating-point order of
reductions, not the math; a test pins greedy outputs and scores to the uncached path's.

On a CPU the rows after the prefix are prefilled one at a time (:func:`forward_rows`): padding
a batch to its longest row costs ~20% more than unpadded rows on two cores, and batching buys
nothing there. :func:`merge` lays the per-row states out as one left-padded batch for decoding,
in a cache whose layers grow in place (:func:`growing_cache`) rather than by concatenation.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass
class Prefix:
    """The shared first ``length`` tokens of a batch and their per-layer (keys, values)."""

    length: int
    states: list[tuple[torch.Tensor, torch.Tensor]] | None  # batch 1; None when length == 0
    reused: bool  # taken from the cache (True) or computed for this batch (False)

    @classmethod
    def none(cls) -> "Prefix":
        return cls(0, None, False)


def common_prefix(seqs: list[list[int]], limit: int) -> int:
    """Length of the longest token prefix all ``seqs`` share, at most ``limit``."""
    first = seqs[0]
    n = min(limit, *(len(s) for s in seqs))
    for i in range(max(0, n)):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return max(0, n)


class PrefixCache:
    """Key/value states of recent shared prompt prefixes, keyed by their token ids."""

    def __init__(self, model, entries: int = 8, min_tokens: int = 32):
        self.model = model
        self.entries = entries
        self.min_tokens = min_tokens
        self._store: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self.supported = entries > 0  # turned off for caches this module cannot lay out

    def find(self, seqs: list[list[int]], reserve: list[int]) -> Prefix:
        """The prefix to reuse for ``seqs``: row ``i`` keeps at least ``reserve[i]`` tokens of its
        own after it (the positions whose logits the caller needs).

        A stored prefix that starts every row is reused; otherwise the batch's common prefix is
        computed and stored when at least two rows share ``min_tokens`` or more (a lone row's
        whole prompt is not worth keeping)."""
        if not self.supported:
            return Prefix.none()
        limit = min(len(s) - r for s, r in zip(seqs, reserve))
        shared = common_prefix(seqs, limit)
        best: tuple[int, ...] | None = None
        for key in self._store:
            if len(key) <= shared and (best is None or len(key) > len(best)) and tuple(seqs[0][:len(key)]) == key:
                best = key
        if best is not None:
            self._store.move_to_end(best)
            return Prefix(len(best), self._store[best], True)
        if shared < self.min_tokens or len(seqs) < 2:
            return Prefix.none()
        states = self._compute(seqs[0][:shared])
        if states is None:
            return Prefix.none()
        self._store[tuple(seqs[0][:shared])] = states
        while len(self._store) > self.entries:
            self._store.popitem(last=False)
        return Prefix(shared, states, False)

    def _compute(self, ids: list[int]):
        device = self.model.device
        with torch.inference_mode():
            cache = self.model(input_ids=torch.tensor([ids], device=device), use_cache=True,
                               logits_to_keep=1).cache
        if not all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
            self.supported = False  # sliding-window, hybrid or recurrent caches: no reuse
            return None
        return [(layer.keys, layer.values) for layer in cache.layers]


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that writes new states into room it keeps ahead (doubling when full).
    transformers' DynamicLayer concatenates a new tensor for every generated token, copying
    the whole cache each step: on two CPU cores ``torch.cat`` was ~70% of decoding time."""

    def __init__(self, room: int = 64):
        super().__init__()
        self.room = room
        self.length = 0
        self._k = self._v = None

    @classmethod
    def holding(cls, keys, values, length: int, room: int) -> "GrowingLayer":
        """A layer over buffers whose first ``length`` positions are filled."""
        layer = cls(room)
        layer.lazy_initialization(keys, values)
        layer._k, layer._v, layer.length = keys, values, length
        layer.keys, layer.values = keys[:, :, :length], values[:, :, :length]
        return layer

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, m = self.length, key_states.shape[-2]
        if self._k is None or n + m > self._k.shape[-2]:
            cap = max(n + m + self.room, 2 * (self._k.shape[-2] if self._k is not None else 0))
            b, h, _, d = key_states.shape
            k, v = key_states.new_empty((b, h, cap, d)), value_states.new_empty((b, h, cap, value_states.shape[-1]))
            if n:
                k[:, :, :n], v[:, :, :n] = self._k[:, :, :n], self._v[:, :, :n]
            self._k, self._v = k, v
        self._k[:, :, n:n + m] = key_states
        self._v[:, :, n:n + m] = value_states
        self.length = n + m
        self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]
        return self.keys, self.values


def growing_cache(layers: list[tuple[torch.Tensor, torch.Tensor, int]] | None = None, room: int = 64):
    """A DynamicCache whose layers grow in place: from (keys buffer, values buffer, filled length)
    per layer, or empty (layers are then created as the model first writes them)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = functools.partial(GrowingLayer, room=room)
    if layers:
        cache.layers = [GrowingLayer.holding(k, v, n, room) for k, v, n in layers]
    return cache


def fresh_cache(prefix: Prefix, batch: int = 1, room: int = 64):
    """A new cache holding the prefix states, copied for ``batch`` rows, with ``room`` more
    positions (the stored prefix tensors are never written to)."""
    if prefix.states is None:
        return growing_cache(room=room)
    layers = []
    for k, v in prefix.states:
        kb = k.new_empty((batch, k.shape[1], prefix.length + room, k.shape[3]))
        vb = v.new_empty((batch, v.shape[1], prefix.length + room, v.shape[3]))
        kb[:, :, :prefix.length], vb[:, :, :prefix.length] = k, v
        layers.append((kb, vb, prefix.length))
    return growing_cache(layers, room)


def forward_rows(model, seqs: list[list[int]], prefix: Prefix, keep: list[int]):
    """Each row's tokens after the prefix through the model, one row at a time, on top of the
    prefix states. Returns, per row, its last ``keep[i]`` positions' logits (keep 0: none) and
    its cache (prefix + row tokens)."""
    device = model.device
    out = []
    with torch.inference_mode():
        for s, k in zip(seqs, keep):
            cache = fresh_cache(prefix, room=len(s) - prefix.length + 1)
            tail = s[prefix.length:]
            logits = None
            if tail:
                pos = torch.arange(prefix.length, len(s), device=device)[None]
                res = model(input_ids=torch.tensor([tail], device=device), position_ids=pos, cache=cache,
                            use_cache=True, logits_to_keep=max(k, 1))
                logits = res.logits[0, -k:] if k else None
            out.append((logits, cache))
    return out


def forward_batch(model, seqs: list[list[int]], prefix: Prefix, keep: int, pad: int):
    """The rows after the prefix as one batch (for GPUs, where batching pays): suffixes
    left-padded between prefix and row, explicit positions. Returns the last ``keep`` positions'
    logits, (B, keep, V)."""
    device = model.device
    tails = [s[prefix.length:] for s in seqs]
    width = max(len(t) for t in tails)
    ids = torch.tensor([[pad] * (width - len(t)) + t for t in tails], device=device)
    own = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in tails], device=device)
    positions = (prefix.length + own.cumsum(-1) - 1).clamp(min=0)
    mask = torch.cat([torch.ones(len(seqs), prefix.length, dtype=own.dtype, device=device), own], dim=1)
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions,
                     cache=fresh_cache(prefix, len(seqs)), use_cache=True, logits_to_keep=keep).logits


def merge(caches: list, lengths: list[int], prefix_len: int, room: int = 64):
    """One left-padded batch cache from per-row caches: row ``i`` holds ``lengths[i]`` tokens
    (prefix included); its own tokens are moved to the right end and the gap between prefix and
    row is zeros, masked out by the caller; ``room`` positions are kept free for decoding.
    Returns the cache and its (B, T) attention mask."""
    total = max(lengths)
    rows = len(caches)
    layers = []
    for li in range(len(caches[0].layers)):
        k0 = caches[0].layers[li].keys
        keys = k0.new_zeros((rows, k0.shape[1], total + room, k0.shape[3]))
        values = keys.clone()
        for r, (c, n) in enumerate(zip(caches, lengths)):
            layer = c.layers[li]
            keys[r, :, :prefix_len] = layer.keys[0, :, :prefix_len]
            values[r, :, :prefix_len] = layer.values[0, :, :prefix_len]
            if n > prefix_len:
                keys[r, :, total - (n - prefix_len):total] = layer.keys[0, :, prefix_len:n]
                values[r, :, total - (n - prefix_len):total] = layer.values[0, :, prefix_len:n]
        layers.append((keys, values, total))
    mask = torch.zeros(rows, total, dtype=torch.long, device=caches[0].layers[0].keys.device)
    mask[:, :prefix_len] = 1
    for r, n in enumerate(lengths):
        if n > prefix_len:
            mask[r, total - (n - prefix_len):] = 1
    return growing_cache(layers, room), mask
