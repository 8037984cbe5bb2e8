"""Search spaces that emit ONNX graphs: ``get_space(name)`` and the :data:`SPACES` registry.

Each space (a :class:`SearchSpace`) parses and writes its architectures' string form, samples or
enumerates them, and builds an architecture's ONNX graph deterministically from a seed:

``nb201``  NAS-Bench-201 cells (:mod:`~graphopt.nas.spaces.nb201`), all 15,625 enumerable
``nb101``  NAS-Bench-101 7-node DAG cells (:mod:`~graphopt.nas.spaces.nb101`)
``darts``  NAS-Bench-301 / DARTS normal + reduction genotypes (:mod:`~graphopt.nas.spaces.darts`)
``transnas-micro``, ``transnas-macro``  TransNAS-Bench-101 encoders (:mod:`~graphopt.nas.spaces.transnas`)
``bert``   BERT-style encoders over layers, heads, hidden and MLP width (:mod:`~graphopt.nas.spaces.bert`)

Spaces of :data:`MODEL_SPACES` are cut from a given model, passed as the first option
(``get_space("subnet", model_path="m.onnx")``):

``subnet`` sub-networks of a transformer or CNN: layers kept, heads and MLP width per layer, or channels
           per convolution (:mod:`~graphopt.nas.spaces.subnet`, the LLaMA-NAS space)

:func:`trainable_parameter_count` counts a built graph's parameters as the benchmarks publish them
(BatchNormalization running statistics and constants left out).
"""

from __future__ import annotations

import importlib

from graphopt.errors import UsageError
from graphopt.nas.spaces._base import SearchSpace
from graphopt.nas.spaces._build import trainable_parameter_count

__all__ = ["MODEL_SPACES", "SPACES", "SearchSpace", "get_space", "trainable_parameter_count"]

#: space name -> "module:class" (modules are imported on first use)
SPACES: dict[str, str] = {
    "nb201": "graphopt.nas.spaces.nb201:NB201Space",
    "nb101": "graphopt.nas.spaces.nb101:NB101Space",
    "darts": "graphopt.nas.spaces.darts:DartsSpace",
    "transnas-micro": "graphopt.nas.spaces.transnas:TransNASMicroSpace",
    "transnas-macro": "graphopt.nas.spaces.transnas:TransNASMacroSpace",
    "bert": "graphopt.nas.spaces.bert:BertSpace",
}

#: spaces of the sub-networks of a given model: name -> "module:class" (constructor takes ``model_path``)
MODEL_SPACES: dict[str, str] = {
    "subnet": "graphopt.nas.spaces.subnet:SubnetSpace",
}


def get_space(name: str, **options: object) -> SearchSpace:
    """A new instance of the space called ``name`` (``options`` go to its constructor)."""
    where = SPACES.get(name) or MODEL_SPACES.get(name)
    if where is None:
        raise UsageError(f"unknown search space {name!r} (choose from {', '.join([*SPACES, *MODEL_SPACES])})")
    if name in MODEL_SPACES and options.get("model_path") is None:
        raise UsageError(f"search space {name!r} is cut from a model: give its ONNX file (--model M.onnx)")
    module, _, cls = where.partition(":")
    space: SearchSpace = getattr(importlib.import_module(module), cls)(**options)
    return space
