"""Sub-networks of a given ONNX model (the LLaMA-NAS space): layers kept, heads and MLP width per layer.

Usage::

    from graphopt.nas.spaces.subnet import SubnetSpace

    space = SubnetSpace("minilm.onnx", layer_choices=(4, 5, 6), head_fractions=(0.5, 0.75, 1.0),
                        mlp_fractions=(0.25, 0.5, 0.75, 1.0))
    arch = space.parse("L0-A12-I1536|L1-A6-I768|L3-A12-I1536")  # or space.sample(rng, 1)[0]
    model = space.build(arch)                                    # an onnx_ir.Model, runs in onnxruntime
    space.to_string(arch)                                        # the canonical string form above
    space.uniform(layers=4, heads=0.5, mlp=0.5)                  # a uniformly shrunk baseline

    # searched like any other space (``graphopt search --space subnet --model minilm.onnx ...``)
    from graphopt.nas.search import encoding_for, search
    result = search(encoding_for(space), objectives, budget=100)

An architecture is a tuple of ``(layer, heads, mlp)`` triples, one per kept layer of the source model
(indices into the source's layers, ascending), with absolute head counts (KV groups under grouped-query
attention) and MLP widths; its string form is ``L<layer>-A<heads>-I<mlp>`` joined by ``|``. ``build``
cuts it out of the source with :func:`graphopt.prune.extract_subnetwork`, which keeps the most important
heads and neurons (``importance``: ``magnitude`` by default; ``activation`` / ``wanda`` read the
``calibration`` .npz; ``first`` keeps the first layers, heads and neurons: the prefix slices of a
weight-shared super-network). ``parse`` accepts any sizes the source allows; ``sample``, ``enumerate`` and the
search's integer genes use the grids:

- gene 0: the number of layers kept, from ``layer_choices`` (default: every count from 1 to all); a
  count ``n`` keeps the ``n`` most important layers (:func:`graphopt.rewrites.prune._importance.layer_scores`,
  by ``importance``, ``activation`` for ``wanda``), in their original order;
- genes ``1..L``: per source layer, the fraction of its heads kept, from ``head_fractions``;
- genes ``L+1..2L``: per source layer, the fraction of its MLP width kept, from ``mlp_fractions``.

A fraction ``f`` of ``n`` units keeps ``max(1, round(f * n))``. Genes of dropped layers do not matter;
:meth:`SubnetSpace.canonical_genes` maps all genes of one network to one key, so that the search does not pay
twice for it (:attr:`SubnetSpace.size` counts the distinct networks).

For a convolutional model (no attention blocks, prunable convolutions), the genes are one channel fraction
(from ``channel_fractions``) per stage (:func:`graphopt.prune.conv_stages`: the prunable convolutions of one
spatial resolution; a fraction of the stage's widest one, narrower ones keep all theirs) and the string
form is ``C<channels>`` per stage joined by ``-``.

The space is picklable (process pools, Ray): it pickles the model path and options and reloads the model
in the worker on first use.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError, UsageError
from graphopt.nas.spaces._base import SearchSpace

__all__ = ["FRACTIONS", "SubnetSpace"]

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
_LAYER = re.compile(r"L(\d+)-A(\d+)-I(\d+)")
_CONV = re.compile(r"C\d+(-C\d+)*")

SubnetArch = tuple[tuple[int, int, int], ...]


def _fractions(values: Sequence[float], what: str) -> tuple[float, ...]:
    out = tuple(sorted({float(v) for v in values}))
    if not out or out[0] <= 0 or out[-1] > 1:
        raise UsageError(f"{what} must be fractions in (0, 1], got {list(values)}")
    return out


def _keep(fraction: float, units: int) -> int:
    return max(1, min(units, round(fraction * units)))


def _first(fractions: Sequence[float], gene: int, units: int) -> int:
    """The first gene whose fraction keeps as many of ``units`` as ``gene`` does."""
    count = _keep(fractions[gene], units)
    return next(i for i, f in enumerate(fractions) if _keep(f, units) == count)


class SubnetSpace(SearchSpace):
    """Sub-networks of the transformer (or CNN) at ``model_path``; see the module docstring."""

    name = "subnet"

    def __init__(self, model_path: str | Path, *, layer_choices: Sequence[int] | None = None,
                 head_fractions: Sequence[float] = FRACTIONS, mlp_fractions: Sequence[float] = FRACTIONS,
                 channel_fractions: Sequence[float] = FRACTIONS, importance: str = "magnitude",
                 calibration: str | Path | None = None, seed: int = 0) -> None:
        from graphopt.prune import SUBNET_IMPORTANCE

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise InputError(f"{self.model_path}: no such file")
        if importance not in SUBNET_IMPORTANCE:
            raise UsageError(f"unknown importance {importance!r} (choose from {', '.join(SUBNET_IMPORTANCE)})")
        if importance in ("activation", "wanda") and calibration is None:
            raise UsageError(f"importance {importance!r} needs calibration data (an .npz of model inputs)")
        self.head_fractions = _fractions(head_fractions, "head fractions")
        self.mlp_fractions = _fractions(mlp_fractions, "MLP fractions")
        self.channel_fractions = _fractions(channel_fractions, "channel fractions")
        self.importance, self.seed = importance, seed
        self.calibration = Path(calibration) if calibration is not None else None
        self._state: dict[str, Any] | None = None
        state = self._load()
        if state["kind"] == "transformer":
            count = len(state["heads"])
            choices = sorted({int(c) for c in (layer_choices or range(1, count + 1))})
            if not choices or choices[0] < 1 or choices[-1] > count:
                raise UsageError(f"layer choices must be counts in [1, {count}], got {list(layer_choices or [])}")
            if choices[0] < count and not state["droppable"]:
                raise UsageError(f"{self.model_path}: no layer can be dropped; use layer choices ({count},)")
            self.layer_choices: tuple[int, ...] = tuple(choices)
        else:
            self.layer_choices = ()

    # -- the source model (loaded lazily; not pickled) -----------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": None}

    def _load(self) -> dict[str, Any]:
        if self._state is not None:
            return self._state
        from graphopt._io import load_model
        from graphopt.rewrites.prune import analyze
        from graphopt.rewrites.prune._importance import layer_scores

        model = load_model(self.model_path)
        feeds = self._feeds(model)
        analysis = analyze(model)
        if analysis.heads:
            bad = [f"attention block {g.index}: {g.reason}" for g in analysis.heads if g.reason]
            bad += [f"MLP block {g.index}: {g.reason}" for g in analysis.mlps if g.reason]
            if bad or len(analysis.mlps) != len(analysis.heads):
                raise InputError(f"{self.model_path}: blocks that cannot be cut: {'; '.join(bad) or 'MLP count'}")
            live = [g for g in analysis.layers if g.reason is None]
            method = "activation" if self.importance == "wanda" else self.importance  # as graphopt.prune.prune
            if method == "first":  # weight-shared super-networks: keep the first layers
                scores = {g.index: -float(g.index) for g in live}
            elif live:
                scores = layer_scores(model, live, analysis.heads, analysis.mlps, method, feeds, self.seed)
            else:
                scores = {}
            # most important first; layers that cannot be dropped come before every droppable one
            order = sorted(range(len(analysis.heads)), key=lambda i: (i in scores, -scores.get(i, 0.0), i))
            self._state = {"kind": "transformer", "model": model, "feeds": feeds, "order": order,
                           "heads": [g.units for g in analysis.heads], "mlp": [g.units for g in analysis.mlps],
                           "droppable": set(scores)}
            return self._state
        from graphopt.prune import conv_stages

        widths = [max(plan.widths) for plan in conv_stages(model)]
        if not widths:
            raise InputError(f"{self.model_path}: no attention blocks or prunable convolutions to search over")
        self._state = {"kind": "cnn", "model": model, "feeds": feeds, "channels": widths}
        return self._state

    def _feeds(self, model: ir.Model) -> Mapping[str, np.ndarray] | None:
        if self.calibration is None:
            return None
        from graphopt.feeds import input_specs, load_feeds

        return load_feeds(self.calibration, input_specs(model))

    @property
    def kind(self) -> str:
        """``transformer`` or ``cnn``."""
        return str(self._load()["kind"])

    @property
    def layer_units(self) -> list[tuple[int, int]]:
        """Per source layer, ``(heads, mlp width)`` (transformers)."""
        state = self._load()
        return list(zip(state["heads"], state["mlp"])) if state["kind"] == "transformer" else []

    # -- notation ------------------------------------------------------------------------------------

    def parse(self, text: str) -> Hashable:
        text = text.strip()
        if self.kind == "cnn":
            if not _CONV.fullmatch(text):
                raise InputError(f"not a CNN sub-network: {text[:60]!r} (expected e.g. C8-C16)")
            return self._check(tuple(int(c[1:]) for c in text.split("-")))
        parts = [_LAYER.fullmatch(p.strip()) for p in text.split("|")]
        if not text or not all(parts):
            raise InputError(f"not a sub-network: {text[:60]!r} (expected e.g. L0-A12-I1536|L2-A6-I768)")
        return self._check(tuple(tuple(int(v) for v in m.groups()) for m in parts if m))

    def to_string(self, arch: Hashable) -> str:
        a = self._check(arch)
        if self.kind == "cnn":
            return "-".join(f"C{c}" for c in a)
        return "|".join(f"L{i}-A{h}-I{m}" for i, h, m in a)

    def _check(self, arch: Any) -> Any:
        state = self._load()
        try:
            if state["kind"] == "cnn":
                counts = tuple(int(c) for c in arch)
                if len(counts) != len(state["channels"]):
                    raise InputError(f"{len(counts)} channel counts for {len(state['channels'])} stages")
                for c, full in zip(counts, state["channels"]):
                    if not 1 <= c <= full:
                        raise InputError(f"channel count {c} not in [1, {full}]")
                return counts
            layers = tuple((int(i), int(h), int(m)) for i, h, m in arch)
        except (TypeError, ValueError):
            raise InputError(f"a sub-network is a tuple of (layer, heads, mlp), got {arch!r}") from None
        indices = [i for i, _, _ in layers]
        if not layers or indices != sorted(set(indices)):
            raise InputError(f"layers must be distinct and ascending, got {indices}")
        count = len(state["heads"])
        for i, h, m in layers:
            if not 0 <= i < count:
                raise InputError(f"layer {i} not in [0, {count})")
            if not 1 <= h <= state["heads"][i] or not 1 <= m <= state["mlp"][i]:
                raise InputError(f"layer {i}: heads must be in [1, {state['heads'][i]}] and mlp in "
                                 f"[1, {state['mlp'][i]}], got {h} and {m}")
        stuck = sorted(set(range(count)) - set(indices) - state["droppable"])
        if stuck:
            raise InputError(f"layers {stuck} cannot be dropped")
        return layers

    # -- integer genes (the search's encoding) -------------------------------------------------------

    @property
    def gene_choices(self) -> tuple[int, ...]:
        """Options per gene (see the module docstring)."""
        state = self._load()
        if state["kind"] == "cnn":
            return (len(self.channel_fractions),) * len(state["channels"])
        count = len(state["heads"])
        return (len(self.layer_choices),) + (len(self.head_fractions),) * count + (len(self.mlp_fractions),) * count

    def decode(self, genes: Sequence[int]) -> Hashable:
        """The architecture of integer ``genes``."""
        state = self._load()
        genes = [int(g) for g in genes]
        if len(genes) != len(self.gene_choices):
            raise UsageError(f"{len(genes)} genes for a space of {len(self.gene_choices)}")
        if state["kind"] == "cnn":
            return tuple(_keep(self.channel_fractions[g], full) for g, full in zip(genes, state["channels"]))
        count = len(state["heads"])
        kept = sorted(state["order"][: self.layer_choices[genes[0]]])
        return tuple((i, _keep(self.head_fractions[genes[1 + i]], state["heads"][i]),
                      _keep(self.mlp_fractions[genes[1 + count + i]], state["mlp"][i])) for i in kept)

    def canonical_genes(self, genes: Sequence[int]) -> tuple[int, ...]:
        """The smallest genes that decode to the same network: genes of dropped layers 0, and each fraction
        the first one giving the same count (one key per network: the search never pays twice for one)."""
        state = self._load()
        genes = tuple(int(g) for g in genes)
        if state["kind"] == "cnn":
            return tuple(_first(self.channel_fractions, g, full) for g, full in zip(genes, state["channels"]))
        count = len(state["heads"])
        kept = set(state["order"][: self.layer_choices[genes[0]]])
        out = [genes[0]] + [0] * (2 * count)
        for i in kept:
            out[1 + i] = _first(self.head_fractions, genes[1 + i], state["heads"][i])
            out[1 + count + i] = _first(self.mlp_fractions, genes[1 + count + i], state["mlp"][i])
        return tuple(out)

    @property
    def size(self) -> int:
        """The number of distinct networks of the grids."""
        state = self._load()
        if state["kind"] == "cnn":
            return int(np.prod([len({_keep(f, c) for f in self.channel_fractions}) for c in state["channels"]]))
        per_layer = [len({_keep(f, h) for f in self.head_fractions}) * len({_keep(f, m) for f in self.mlp_fractions})
                     for h, m in zip(state["heads"], state["mlp"])]
        return sum(int(np.prod([per_layer[i] for i in state["order"][:n]])) for n in self.layer_choices)

    def uniform(self, *, layers: int | None = None, heads: float = 1.0, mlp: float = 1.0) -> Hashable:
        """The uniformly shrunk network: the ``layers`` most important layers, ``heads`` and ``mlp`` of every one."""
        state = self._load()
        if state["kind"] == "cnn":
            return self._check(tuple(_keep(heads, full) for full in state["channels"]))
        count = len(state["heads"])
        kept = sorted(state["order"][: count if layers is None else int(layers)])
        return self._check(tuple((i, _keep(heads, state["heads"][i]), _keep(mlp, state["mlp"][i])) for i in kept))

    # -- the space -----------------------------------------------------------------------------------

    def enumerate(self) -> Iterator[Hashable]:
        """Every distinct sub-network of the grids (in gene order); large for deep models."""
        seen: set[tuple[int, ...]] = set()
        for genes in itertools.product(*(range(c) for c in self.gene_choices)):
            key = self.canonical_genes(genes)
            if key not in seen:
                seen.add(key)
                yield self.decode(key)

    def sample(self, rng: np.random.Generator, count: int) -> list[Hashable]:
        high = np.array(self.gene_choices)
        return [self.decode(rng.integers(0, high).tolist()) for _ in range(count)]

    def one_hot(self, arch: Hashable) -> np.ndarray:
        """Per source layer: kept, heads / all heads, mlp / full width (CNN: channels / all channels)."""
        state = self._load()
        a = self._check(arch)
        if state["kind"] == "cnn":
            return np.array([c / full for c, full in zip(a, state["channels"])], dtype=np.float32)
        out = np.zeros((len(state["heads"]), 3), dtype=np.float32)
        for i, h, m in a:
            out[i] = (1.0, h / state["heads"][i], m / state["mlp"][i])
        return out.ravel()

    def build(self, arch: Hashable, *, seed: int = 0) -> ir.Model:
        """The sub-network (``seed`` only matters for ``random`` importance: it is the space's own seed)."""
        from graphopt.prune import extract_subnetwork

        state = self._load()
        a = self._check(arch)
        if state["kind"] == "cnn":
            model = extract_subnetwork(state["model"], stages=list(a), importance=self.importance,
                                       feeds=state["feeds"], seed=self.seed)
        else:
            layers = [i for i, _, _ in a]
            heads = [h for i, h, _ in a]
            mlp = [m for i, _, m in a]
            full = all(h == state["heads"][i] for i, h, _ in a)
            full_mlp = all(m == state["mlp"][i] for i, _, m in a)
            model = extract_subnetwork(state["model"], layers=layers, heads=None if full else heads,
                                       mlp=None if full_mlp else mlp, importance=self.importance,
                                       feeds=state["feeds"], seed=self.seed)
        model.metadata_props.update({"graphopt.nas.space": self.name, "graphopt.nas.arch": self.to_string(a),
                                     "graphopt.nas.source": self.model_path.name})
        return model
