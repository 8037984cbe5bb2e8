"""Frontend: torch modules and Hugging Face models to ONNX, verified with onnxruntime.

:func:`export_module` exports any ``torch.nn.Module`` (dynamo exporter first, TorchScript as the
fallback, dynamic batch / sequence axes); :func:`export_hf_model` and
:func:`export_sentence_embedder` build the wrapper and example inputs for a local Hugging Face
model folder. torch and transformers are imported inside the functions: importing is cheap.
"""

from graphopt.frontend._huggingface import export_hf_model, export_sentence_embedder, minilm_dir
from graphopt.frontend._torch_export import EXPORTERS, ExportResult, export_module

__all__ = [
    "EXPORTERS",
    "ExportResult",
    "export_hf_model",
    "export_module",
    "export_sentence_embedder",
    "minilm_dir",
]
