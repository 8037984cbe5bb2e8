"""The pass interface: settings in frozen dataclasses, provenance, a registry and hooks.

A graphopt pass is an ``onnx_ir`` in-place pass with one job (``call(model) -> PassResult``) and
keyword-only settings gathered in a frozen dataclass (a subclass of :class:`PassSettings`). Each
setting is declared with :func:`setting`, which carries a description and, optionally, a search
space that ``graphopt.nas`` can read. Every pass that modifies a model appends a provenance record
to ``metadata_props`` (see :mod:`graphopt.provenance`).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import onnx_ir as ir

from graphopt import provenance
from graphopt.errors import GraphoptError, PassError, UsageError, one_line

__all__ = [
    "GraphoptPass",
    "PassHook",
    "PassSettings",
    "SettingInfo",
    "TimingHook",
    "available_passes",
    "create_pass",
    "get_pass_class",
    "register_pass",
    "run_passes",
    "setting",
]

logger = logging.getLogger(__name__)

_BUILTIN_PASS_MODULES = (
    "graphopt.rewrites.cleanup",
    "graphopt.rewrites.fusion",
    "graphopt.rewrites.ort_fusion",
    "graphopt.rewrites.quantize_weights",
    "graphopt.rewrites.quantize_mixed",
    "graphopt.rewrites.quantize_ternary",
    "graphopt.rewrites.quantize_lowrank",
    "graphopt.rewrites.quantize_float",
    "graphopt.rewrites.quantize_activations",
    "graphopt.rewrites.quantize_dynamic",
    "graphopt.rewrites.smooth_quant",
    "graphopt.rewrites.prune",
    "graphopt.rewrites.attention",
    "graphopt.rewrites.adapters",
    "graphopt.export.lowering",
    "graphopt.export.tensorrt",
)


def setting(default: Any, description: str, *, search: Sequence[Any] | None = None) -> Any:
    """Declare one pass setting: its default, a description and an optional search space."""
    metadata = {"description": description, "search": tuple(search) if search is not None else None}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class SettingInfo:
    """Describes one setting for help texts, recipes and search spaces."""

    name: str
    default: Any
    description: str
    search: tuple[Any, ...] | None


@dataclasses.dataclass(frozen=True)
class PassSettings:
    """Base class of every pass's settings. Subclasses add fields with :func:`setting`."""

    def __post_init__(self) -> None:
        # Recipes (JSON / YAML) give lists where a setting's default is a tuple.
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            if isinstance(field.default, tuple) and isinstance(getattr(self, field.name), list):
                object.__setattr__(self, field.name, tuple(getattr(self, field.name)))

    def validate(self) -> None:
        """Raise :class:`UsageError` for values out of range. Subclasses override."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> list[SettingInfo]:
        return [
            SettingInfo(f.name, f.default, f.metadata.get("description", ""), f.metadata.get("search"))
            for f in dataclasses.fields(cls)
        ]


SettingsT = TypeVar("SettingsT", bound=PassSettings)


class GraphoptPass(ir.passes.InPlacePass, Generic[SettingsT]):
    """Base class of graphopt's passes.

    Subclasses set ``name`` (the registry and recipe name), ``Settings`` (their settings class,
    also the type parameter: ``class FooPass(GraphoptPass[FooSettings])``) and, for passes that
    change outputs (quantization, pruning), ``output_preserving = False``; they implement ``call``.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type[Any]] = PassSettings
    settings: SettingsT
    output_preserving: ClassVar[bool] = True

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        try:
            self.settings = self.Settings(**settings)
        except TypeError as exc:
            known = ", ".join(f.name for f in dataclasses.fields(self.Settings)) or "none"
            raise UsageError(f"pass {self.name!r}: {exc} (known settings: {known})") from None
        self.settings.validate()

    def __call__(self, model_or_result: ir.Model | ir.passes.PassResult, /) -> ir.passes.PassResult:
        result = super().__call__(model_or_result)
        if result.modified:
            provenance.record_pass(result.model, self.name, self.settings.to_dict())
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings})"


PassT = TypeVar("PassT", bound="GraphoptPass[Any]")

_REGISTRY: dict[str, type[GraphoptPass[Any]]] = {}


def register_pass(cls: type[PassT]) -> type[PassT]:
    """Class decorator that makes a pass available to recipes under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"pass name {cls.name!r} is already taken by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_passes() -> None:
    for module in _BUILTIN_PASS_MODULES:
        importlib.import_module(module)


def available_passes() -> dict[str, type[GraphoptPass[Any]]]:
    """All registered passes by name."""
    _load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def get_pass_class(name: str) -> type[GraphoptPass[Any]]:
    passes = available_passes()
    if name not in passes:
        raise UsageError(f"unknown pass {name!r}; available: {', '.join(passes)}")
    return passes[name]


def create_pass(name: str, settings: Mapping[str, Any] | None = None) -> GraphoptPass[Any]:
    """Instantiate a registered pass with validated settings."""
    return get_pass_class(name)(**dict(settings or {}))


class PassHook(Protocol):
    """Cross-cutting work around each pass (timing, dumping, verification)."""

    def before(self, pass_: GraphoptPass[Any], model: ir.Model) -> None: ...

    def after(self, pass_: GraphoptPass[Any], result: ir.passes.PassResult) -> None: ...


class TimingHook:
    """Records wall time, node count and whether each pass modified the model."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._start = 0.0

    def before(self, pass_: GraphoptPass[Any], model: ir.Model) -> None:
        self._start = time.perf_counter()

    def after(self, pass_: GraphoptPass[Any], result: ir.passes.PassResult) -> None:
        seconds = time.perf_counter() - self._start
        nodes = sum(1 for _ in result.model.graph.all_nodes())
        self.records.append({"pass": pass_.name, "modified": result.modified, "seconds": seconds, "nodes": nodes})
        logger.info("%s: modified=%s nodes=%d %.3fs", pass_.name, result.modified, nodes, seconds)


def run_passes(
    model: ir.Model,
    passes: Iterable[GraphoptPass[Any]],
    hooks: Sequence[PassHook] = (),
    progress: Callable[[str], None] | None = None,
) -> bool:
    """Run ``passes`` in order on ``model`` (in place); return whether any modified it."""
    modified = False
    for pass_ in passes:
        if progress is not None:
            progress(pass_.name)
        for hook in hooks:
            hook.before(pass_, model)
        try:
            result = pass_(model)
        except GraphoptError:
            raise
        except ir.passes.PassError as exc:
            raise PassError(f"pass {pass_.name!r} failed: {one_line(exc)}") from exc
        except Exception as exc:  # a bug in a pass or its library (onnxscript's folder raises RuntimeError)
            raise PassError(f"pass {pass_.name!r} failed: {type(exc).__name__}: {one_line(exc)}") from exc
        for hook in hooks:
            hook.after(pass_, result)
        modified = modified or result.modified
    return modified
