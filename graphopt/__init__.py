"""graphopt: compiler-style ONNX graph rewriting, verified and measured with onnxruntime.

The public names below load lazily so that ``graphopt --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "graphopt._io",
    "save_model": "graphopt._io",
    "GraphoptError": "graphopt.errors",
    "GraphoptPass": "graphopt.passes",
    "PassSettings": "graphopt.passes",
    "available_passes": "graphopt.passes",
    "create_pass": "graphopt.passes",
    "register_pass": "graphopt.passes",
    "setting": "graphopt.passes",
    "NAMED_RECIPES": "graphopt.recipes",
    "Recipe": "graphopt.recipes",
    "apply_recipe": "graphopt.recipes",
    "resolve_recipe": "graphopt.recipes",
    "verify_models": "graphopt.verify",
    "optimize_verified": "graphopt.pipeline",
    "summarize": "graphopt.analysis",
    "benchmark": "graphopt.bench",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'graphopt' has no attribute {name!r}")
