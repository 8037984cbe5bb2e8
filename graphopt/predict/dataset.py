"""Training data for predictors: (architecture or ONNX file, target) pairs, and their features.

``load_labels(csv, target, space=...)`` reads a CSV: with a space, an ``arch`` column (``net`` is
accepted too) in the space's notation; without one, a ``model`` column of ONNX paths (relative
paths are taken from the CSV's folder). ``Featurizer(spec)`` turns architectures or ONNX models
into one feature matrix, the groups of :data:`FEATURE_GROUPS` side by side:

``onehot``      the space's :meth:`~graphopt.nas.spaces.SearchSpace.one_hot` (architectures only)
``structural``  :func:`graphopt.predict.structural_features` of the graph and (``spec.live``, the
                default) :func:`graphopt.predict.liveness.live_features`, as ``sign(x) log1p(|x|)``
``text``        :class:`graphopt.predict.embed.TextEmbedder` vectors of the graph's encoding
``zc``          opt-in: graphopt's zero-cost metrics (synflow, jacov, nwot) of the graph on natural
                images (:mod:`graphopt.predict.zero_cost`, 1-2 s per NAS-Bench-201 cell), as
                ``sign(x) log1p(|x|)``

Graph-derived groups of an architecture come from the space's ONNX graph (seed 0) and are cached
in memory and, given ``cache_dir``, on disk (one JSON per architecture; ``zc`` values in their own
files under ``zero_cost/``, with the seconds they took).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError, UsageError
from graphopt.predict._cache import write_cache_file

__all__ = ["FEATURE_GROUPS", "FeatureSpec", "Featurizer", "Labels", "load_labels"]

FEATURE_GROUPS = ("onehot", "structural", "text", "zc")
_CACHE_VERSION = "1"
_ZC_CACHE_VERSION = "1"


@dataclasses.dataclass(frozen=True)
class Labels:
    """Rows of a label CSV: ``items`` are canonical architecture strings or ONNX paths."""

    items: list[str]
    targets: np.ndarray
    column: str
    source: str
    space: str | None = None


def load_labels(path: str | os.PathLike[str], target: str | None, *, space: str | None = None) -> Labels:
    """Read ``(item, target)`` rows from a CSV (see the module docstring); rows with an empty target
    are skipped. ``target=None`` reads the items only (targets are NaN, to be measured). Raises
    :class:`InputError` with the file and row for anything malformed."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        with p.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{p}: cannot read as CSV ({exc})") from exc
    key_options = ("arch", "net") if space else ("model",)
    key = next((c for c in key_options if c in columns), None)
    if key is None:
        want = "an 'arch' column" if space else "a 'model' column of ONNX paths (or give --space)"
        raise InputError(f"{p}: needs {want}; columns are {', '.join(columns) or 'none'}")
    if target is not None and target not in columns:
        raise InputError(f"{p}: no column {target!r}; columns are {', '.join(columns)}")
    parser = _space(space) if space else None
    items, targets = [], []
    for line, row in enumerate(rows, start=2):
        raw = (row.get(target) or "").strip() if target is not None else "nan"
        if not raw:
            continue
        try:
            value = float(raw)
        except ValueError:
            raise InputError(f"{p}: row {line}: {target} is not a number: {raw!r}") from None
        if target is not None and not math.isfinite(value):
            raise InputError(f"{p}: row {line}: {target} is not finite: {raw!r}")
        item = (row.get(key) or "").strip()
        if parser is not None:
            try:
                item = parser.to_string(parser.parse(item))
            except InputError as exc:
                raise InputError(f"{p}: row {line}: {exc}") from None
        else:
            model_path = Path(item)
            item = str(model_path if model_path.is_absolute() else p.parent / model_path)
            if not Path(item).is_file():
                raise InputError(f"{p}: row {line}: {item}: no such file")
        items.append(item)
        targets.append(value)
    if len(items) < 2:
        raise InputError(f"{p}: needs at least 2 rows with a {target or 'model'} value, found {len(items)}")
    return Labels(items, np.asarray(targets), target or "", str(p), space)


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Which feature groups a predictor reads, for which space (``None``: ONNX files)."""

    groups: tuple[str, ...] = ("onehot", "structural")
    space: str | None = None
    variant: str = "full"
    pooling: str = "lines"
    live: bool = True

    def __post_init__(self) -> None:
        unknown = [g for g in self.groups if g not in FEATURE_GROUPS]
        if unknown or not self.groups:
            raise UsageError(f"feature groups must be among {', '.join(FEATURE_GROUPS)}, got {', '.join(self.groups)}")
        if "onehot" in self.groups and self.space is None:
            raise UsageError("the onehot features need a search space (--space)")

    @property
    def graph_groups(self) -> tuple[str, ...]:
        """The groups any ONNX graph has (all but ``onehot``)."""
        return tuple(g for g in self.groups if g != "onehot")

    def graph_only(self) -> FeatureSpec | None:
        """This spec without ``onehot``; ``None`` if nothing is left."""
        groups = self.graph_groups
        return dataclasses.replace(self, groups=groups) if groups else None

    def to_dict(self) -> dict[str, Any]:
        return {"groups": list(self.groups), "space": self.space, "variant": self.variant, "pooling": self.pooling,
                "live": self.live}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """The spec of :meth:`to_dict`; files written before live features existed read ``live=False``."""
        return cls(tuple(data["groups"]), data.get("space"), data.get("variant", "full"), data.get("pooling", "lines"),
                   bool(data.get("live", False)))


class Featurizer:
    """Feature matrices of architectures (of ``spec.space``) or ONNX models, for ``spec.groups``."""

    def __init__(self, spec: FeatureSpec, *, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.spec = spec
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._space_obj: Any = _space(spec.space) if spec.space else None
        self._graphs: dict[str, _GraphInfo] = {}
        self._embedder: Any = None
        self._zc: dict[str, tuple[np.ndarray, float]] = {}

    @property
    def zero_cost_seconds(self) -> dict[str, float]:
        """Seconds the ``zc`` metrics took per architecture featurized so far (also when read from the cache)."""
        return {key: seconds for key, (_, seconds) in self._zc.items()}

    def archs(self, archs: Sequence[Hashable | str]) -> np.ndarray:
        """Features of architectures of ``spec.space`` (objects or their strings)."""
        if self._space_obj is None:
            raise UsageError("this predictor was trained on ONNX files: score ONNX models, not --space architectures")
        space = self._space_obj
        parsed = [space.parse(a) if isinstance(a, str) else a for a in archs]
        keys = [space.to_string(a) for a in parsed]
        blocks: list[np.ndarray] = []
        if "onehot" in self.spec.groups:
            blocks.append(np.stack([np.asarray(space.one_hot(a), np.float64) for a in parsed]))
        if self._needs_graph_info():
            infos = [self._arch_graph(key, arch) for key, arch in zip(keys, parsed)]
            blocks.extend(self._graph_blocks(infos))
        if "zc" in self.spec.groups:
            from graphopt.predict.zero_cost import zero_cost_transform

            blocks.append(zero_cost_transform(np.stack([self._arch_zc(key, arch) for key, arch in zip(keys, parsed)])))
        return np.concatenate(blocks, axis=1)

    def models(self, models: Sequence[ir.Model | str | os.PathLike[str]]) -> np.ndarray:
        """Features of ONNX models (objects or paths); needs no ``onehot`` in ``spec.groups``."""
        if "onehot" in self.spec.groups:
            raise UsageError(f"the onehot features exist only for architectures of space {self.spec.space!r}")
        from graphopt._io import load_model

        infos: list[_GraphInfo] = []
        zc: list[np.ndarray] = []
        for m in models:
            model = m if isinstance(m, ir.Model) else load_model(m)
            if self._needs_graph_info():
                infos.append(self._graph_info(model))
            if "zc" in self.spec.groups:
                zc.append(self._model_zc(model, str(m) if not isinstance(m, ir.Model) else f"model {len(zc)}"))
        blocks = self._graph_blocks(infos) if infos else []
        if zc:
            from graphopt.predict.zero_cost import zero_cost_transform

            blocks.append(zero_cost_transform(np.stack(zc)))
        return np.concatenate(blocks, axis=1)

    # -- graph-derived groups --------------------------------------------------------------------

    def _needs_graph_info(self) -> bool:
        return "structural" in self.spec.groups or "text" in self.spec.groups

    def _model_zc(self, model: ir.Model, name: str) -> np.ndarray:
        from graphopt.predict.zero_cost import zero_cost_features

        try:
            result = zero_cost_features(model)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from None
        self._zc[name] = (result.values, result.seconds)
        return result.values

    def _arch_zc(self, key: str, arch: Hashable) -> np.ndarray:
        """Raw zero-cost values of an architecture: memory, then the disk cache, then computed (and cached)."""
        if key in self._zc:
            return self._zc[key][0]
        from graphopt.predict.zero_cost import ZeroCostSpec, zero_cost_features

        path = None
        if self.cache_dir is not None:
            material = f"{_ZC_CACHE_VERSION}|{self.spec.space}|{ZeroCostSpec().key()}|{key}"
            path = self.cache_dir / "zero_cost" / f"{hashlib.sha256(material.encode()).hexdigest()}.json"
        cached = _read_json(path) if path is not None else None
        try:
            values, seconds = np.asarray(cached["values"], np.float64), float(cached["seconds"])  # type: ignore[index]
            if values.shape != (len(ZeroCostSpec().metrics),):
                raise ValueError("stale entry")
        except (TypeError, KeyError, ValueError):
            result = zero_cost_features(self._space_obj.build(arch))
            values, seconds = result.values, result.seconds
            if path is not None:
                _write_json(path, {"arch": key, "values": values.tolist(), "seconds": seconds})
        self._zc[key] = (values, seconds)
        return values

    def _graph_blocks(self, infos: Sequence[_GraphInfo]) -> list[np.ndarray]:
        blocks = []
        if "structural" in self.spec.groups:
            raw = np.stack([np.concatenate([i.features, i.live]) if self.spec.live and i.live is not None
                            else i.features for i in infos])
            blocks.append(np.sign(raw) * np.log1p(np.abs(raw)))
        if "text" in self.spec.groups:
            blocks.append(self._embed([info.text for info in infos]).astype(np.float64))
        return blocks

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self._embedder is None:
            from graphopt.predict.embed import TextEmbedder

            cache = self.cache_dir / "embeddings" if self.cache_dir is not None else None
            self._embedder = TextEmbedder(pooling=self.spec.pooling, cache_dir=cache)
        return np.asarray(self._embedder.embed(texts))

    def _graph_info(self, model: ir.Model) -> _GraphInfo:
        from graphopt.predict.encoding import encode_graph, structural_features

        features = np.array(list(structural_features(model).values()), np.float64)
        text = encode_graph(model, variant=self.spec.variant) if "text" in self.spec.groups else ""
        return _GraphInfo(features, text, _live(model) if self.spec.live else None)

    def _arch_graph(self, key: str, arch: Hashable) -> _GraphInfo:
        if key in self._graphs:
            return self._graphs[key]
        path = self._cache_path(key)
        info = _read_cached(path) if path is not None else None
        if info is None or ("text" in self.spec.groups and not info.text):
            info = self._graph_info(self._space_obj.build(arch))
        elif self.spec.live and (info.live is None or len(info.live) != _live_width()):  # cached before: add them
            info = dataclasses.replace(info, live=_live(self._space_obj.build(arch)))
        else:
            path = None  # nothing new to cache
        if path is not None:
            _write_cached(path, info)
        self._graphs[key] = info
        return info

    def _cache_path(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(f"{_CACHE_VERSION}|{self.spec.space}|{self.spec.variant}|{key}".encode()).hexdigest()
        return self.cache_dir / "graphs" / f"{digest}.json"


@dataclasses.dataclass(frozen=True)
class _GraphInfo:
    features: np.ndarray
    text: str
    live: np.ndarray | None = None


def _live_width() -> int:
    from graphopt.predict.liveness import LIVE_FEATURE_NAMES

    return len(LIVE_FEATURE_NAMES)


def _live(model: ir.Model) -> np.ndarray:
    from graphopt.predict.liveness import live_features

    return np.array(list(live_features(model).values()), np.float64)


def _space(name: str | None) -> Any:
    from graphopt.nas.spaces import get_space

    return get_space(str(name))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` atomically; a cache that cannot be written is skipped."""
    write_cache_file(path, lambda handle: json.dump(record, handle))


def _read_cached(path: Path) -> _GraphInfo | None:
    try:
        data = json.loads(path.read_text())
        live = data.get("live")
        return _GraphInfo(np.asarray(data["features"], np.float64), str(data["text"]),
                          None if live is None else np.asarray(live, np.float64))
    except (OSError, ValueError, KeyError):
        return None


def _write_cached(path: Path, info: _GraphInfo) -> None:
    record: dict[str, Any] = {"features": info.features.tolist(), "text": info.text}
    if info.live is not None:
        record["live"] = info.live.tolist()
    _write_json(path, record)
