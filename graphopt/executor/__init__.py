"""The differentiable ONNX executor: ONNX graphs run with torch, trained, written back.

``TorchExecutor(model, trainable=...)`` is an ``nn.Module`` whose ``forward(feeds)`` evaluates the
graph with torch operations (see :func:`supported_ops`); :func:`finetune` trains selected
initializers against labels or a teacher graph run in onnxruntime and writes them back.
"""

from graphopt.executor._registry import supported_ops
from graphopt.executor.executor import TRAINABLE_MARKERS, TorchExecutor, select_trainable
from graphopt.executor.train import LOSSES, FinetuneResult, finetune

__all__ = [
    "LOSSES",
    "TRAINABLE_MARKERS",
    "FinetuneResult",
    "TorchExecutor",
    "finetune",
    "select_trainable",
    "supported_ops",
]
