"""Tiny models for tests: torch modules and Hugging Face models with random weights, and their exports.

Every builder is deterministic (fixed seeds) and small enough to export in seconds on a CPU:
2 layers, hidden size 32, a vocabulary of 100 tokens. Other test files reuse these helpers::

    from tests._models import HF_KINDS, save_tiny_hf_model, export_tiny_hf_model
    result = export_tiny_hf_model("bert", tmp_path, exporter="dynamo")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

__all__ = [
    "HF_KINDS",
    "export_tiny_hf_model",
    "save_tiny_hf_model",
    "tiny_cnn",
    "tiny_mlp",
]

# kind -> (config class, model class) names in transformers.
_HF_SPECS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bert": ("BertConfig", "BertModel", dict(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, type_vocab_size=2,
    )),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(
        vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0,
    )),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )),
    "vit": ("ViTConfig", "ViTModel", dict(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64,
    )),
}

HF_KINDS = tuple(_HF_SPECS)


def tiny_mlp() -> Any:
    """Linear(8, 16) -> GELU -> LayerNorm -> Linear(16, 4), input ``[batch, 8]``."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)
    ).eval()


def tiny_cnn() -> Any:
    """Conv, BatchNorm, ReLU, MaxPool, Conv, ReLU, average pool, Linear; input ``[batch, 3, 16, 16]``."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 5),
    )
    # Non-trivial BatchNorm statistics, so that folding it into the convolution is really tested.
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def save_tiny_hf_model(kind: str, directory: str | os.PathLike[str]) -> Path:
    """Build the tiny ``kind`` model (one of :data:`HF_KINDS`) with random weights and
    ``save_pretrained`` it into ``directory/kind``; return that folder."""
    import torch
    import transformers

    config_name, model_name, settings = _HF_SPECS[kind]
    out = Path(directory) / kind
    if (out / "config.json").is_file():
        return out
    config = getattr(transformers, config_name)(**settings)
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval()
    model.save_pretrained(out)
    return out


def export_tiny_hf_model(
    kind: str, directory: str | os.PathLike[str], *, exporter: str = "auto", **options: Any
) -> Any:
    """Save the tiny ``kind`` model under ``directory`` and export it to
    ``directory/{kind}-{exporter}.onnx`` with :func:`graphopt.frontend.export_hf_model`."""
    from graphopt.frontend import export_hf_model

    model_dir = save_tiny_hf_model(kind, directory)
    target = Path(directory) / f"{kind}-{exporter}.onnx"
    return export_hf_model(model_dir, target, exporter=exporter, **options)
