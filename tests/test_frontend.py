"""graphopt.frontend: torch / Hugging Face -> ONNX with both exporters, verified with onnxruntime,
then run through the default recipe and verified again."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from graphopt._io import load_model  # noqa: E402
from graphopt.errors import CheckFailed, ExportError, InputError, UsageError  # noqa: E402
from graphopt.feeds import input_specs, synthesize_feeds  # noqa: E402
from graphopt.frontend import ExportResult, export_hf_model, export_module, export_sentence_embedder  # noqa: E402
from graphopt.recipes import NAMED_RECIPES, apply_recipe  # noqa: E402
from graphopt.runtime import make_session  # noqa: E402
from graphopt.verify import verify_models  # noqa: E402
from tests._models import HF_KINDS, export_tiny_hf_model, save_tiny_hf_model, tiny_cnn, tiny_mlp  # noqa: E402

EXPORTERS = ("dynamo", "torchscript")


def _dims(value: Any) -> list[Any]:
    return [d if isinstance(d, int) else d.value for d in value.shape]


def _optimize_and_verify(path: Path, *, batch: int = 3, sequence: int = 11) -> None:
    """The default recipe on the export keeps its outputs on feeds of a new batch / sequence size."""
    original = load_model(path)
    optimized = load_model(path)
    apply_recipe(optimized, NAMED_RECIPES["default"])
    feeds = synthesize_feeds(input_specs(original), batch=batch, sequence=sequence, seed=1)
    report = verify_models(path, optimized, feeds, signature=original)
    assert report.passed, report.to_dict()


# --- torch modules ---------------------------------------------------------------------------


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mlp_exports_with_dynamic_batch(exporter: str, tmp_path: Path) -> None:
    target = tmp_path / "mlp.onnx"
    result = export_module(
        tiny_mlp(), (torch.randn(2, 8),), target, input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "batch"}}, exporter=exporter,
    )
    assert isinstance(result, ExportResult)
    assert result.path == target and result.exporter == exporter
    assert result.max_abs_error is not None and result.max_abs_error < 1e-5
    assert result.input_names == ("x",) and result.output_names == ("y",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx"]  # weights inline, no temp files left
    model = load_model(target)
    assert _dims(model.graph.inputs[0]) == ["batch", 8]
    _optimize_and_verify(target, batch=5)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cnn_exports_and_survives_default_recipe(exporter: str, tmp_path: Path) -> None:
    target = tmp_path / "cnn.onnx"
    result = export_module(
        tiny_cnn(), (torch.randn(2, 3, 16, 16),), target, input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}}, exporter=exporter,
    )
    assert result.exporter == exporter and result.max_abs_error is not None and result.max_abs_error < 1e-4
    model = load_model(target)
    assert _dims(model.graph.inputs[0]) == ["batch", 3, 16, 16]
    _optimize_and_verify(target, batch=4)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_keyword_inputs_and_shared_dynamic_dims(exporter: str, tmp_path: Path) -> None:
    class Masked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 3)

        def forward(self, features: Any, mask: Any) -> Any:
            return self.proj(features) * mask.unsqueeze(-1)

    axes = {"features": {0: "batch", 1: "sequence"}, "mask": {0: "batch", 1: "sequence"}}
    # Keys out of forward()'s order: graph inputs still follow the signature.
    example = {"mask": torch.ones(2, 6), "features": torch.randn(2, 6, 4)}
    result = export_module(Masked(), example, tmp_path / "masked.onnx", dynamic_axes=axes, exporter=exporter)
    assert result.exporter == exporter and result.input_names == ("features", "mask")
    session = make_session(result.path)
    feeds = {"features": np.ones((3, 5, 4), np.float32), "mask": np.zeros((3, 5), np.float32)}
    out = session.run(None, feeds)[0]
    assert out.shape == (3, 5, 3) and not out.any()


def test_auto_falls_back_to_torchscript(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Branchy(torch.nn.Module):
        def forward(self, x: Any) -> Any:  # data-dependent control flow: torch.export refuses it
            if x.sum() > 0:
                return x * 2
            return x - 1

    with caplog.at_level(logging.WARNING, logger="graphopt.frontend"):
        result = export_module(Branchy(), (torch.ones(2, 3),), tmp_path / "branchy.onnx")
    assert result.exporter == "torchscript"
    assert any("dynamo exporter failed" in r.getMessage() and "data-dependent" in r.getMessage()
               for r in caplog.records)


def test_every_exporter_failing_raises_one_line_export_error(tmp_path: Path) -> None:
    class Eig(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return torch.linalg.eig(x)[0].real

    with pytest.raises(ExportError) as info:
        export_module(Eig(), (torch.randn(3, 3),), tmp_path / "eig.onnx")
    message = str(info.value)
    assert "\n" not in message and "linalg_eig" in message
    assert "dynamo:" in message and "torchscript:" in message
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_mismatch_with_torch_raises_check_failed(tmp_path: Path) -> None:
    class Counter(torch.nn.Module):
        """Bakes a Python counter into the graph: the export differs from the eager call."""

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x: Any) -> Any:
            self.calls += 1
            return x + self.calls

    with pytest.raises(CheckFailed, match="differs from torch"):
        export_module(Counter(), (torch.zeros(2, 3),), tmp_path / "counter.onnx", exporter="torchscript")
    assert list(tmp_path.iterdir()) == []
    result = export_module(Counter(), (torch.zeros(2, 3),), tmp_path / "counter.onnx", exporter="torchscript",
                           verify=False)
    assert result.max_abs_error is None and result.path.is_file()


def test_bad_usage_is_rejected(tmp_path: Path) -> None:
    mlp, example = tiny_mlp(), (torch.randn(2, 8),)
    with pytest.raises(UsageError, match="unknown exporter"):
        export_module(mlp, example, tmp_path / "m.onnx", exporter="onnxscript")
    with pytest.raises(UsageError, match="not an input or output name"):
        export_module(mlp, example, tmp_path / "m.onnx", input_names=["x"], dynamic_axes={"y": {0: "b"}})
    with pytest.raises(UsageError, match="input_names"):
        export_module(mlp, example, tmp_path / "m.onnx", input_names=["x", "y"])
    with pytest.raises(InputError, match="does not exist"):
        export_module(mlp, example, tmp_path / "missing" / "m.onnx")
    assert mlp.training is False


def test_module_mode_is_restored(tmp_path: Path) -> None:
    mlp = tiny_mlp().train()
    export_module(mlp, (torch.randn(2, 8),), tmp_path / "m.onnx", exporter="torchscript")
    assert mlp.training is True


class _FreshBlock(torch.nn.Module):
    """Two zero-bias linears and two fresh LayerNorms: equal parameters the optimiser would merge or fold."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        self.n1, self.n2 = torch.nn.LayerNorm(8), torch.nn.LayerNorm(8)
        for linear in (self.a, self.b):
            torch.nn.init.zeros_(linear.bias)

    def forward(self, x: Any) -> Any:
        return self.n2(self.b(self.n1(self.a(x))))


@pytest.mark.parametrize("exporter", ("dynamo", "auto"))
def test_keep_parameters_gives_every_parameter_its_own_initializer(exporter: str, tmp_path: Path) -> None:
    block = _FreshBlock()
    kept = export_module(block, (torch.randn(2, 8),), tmp_path / "kept.onnx", exporter=exporter,
                         keep_parameters=True)
    assert kept.exporter == "dynamo"
    initializers = load_model(kept.path).graph.initializers.values()
    floats = [v.const_value for v in initializers if v.const_value is not None
              and v.const_value.dtype.is_floating_point() and v.const_value.size > 1]
    assert len(floats) == 8 and sum(t.size for t in floats) == sum(p.numel() for p in block.parameters())
    if exporter == "dynamo":  # what the option is for: the optimised export drops the biases, shares n2's params
        merged = export_module(block, (torch.randn(2, 8),), tmp_path / "merged.onnx", exporter=exporter)
        assert len(load_model(merged.path).graph.initializers) < 8


def test_keep_parameters_refuses_the_torchscript_exporter(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="dynamo"):
        export_module(_FreshBlock(), (torch.randn(2, 8),), tmp_path / "m.onnx", exporter="torchscript",
                      keep_parameters=True)
    assert not (tmp_path / "m.onnx").exists()


# --- Hugging Face models from tiny configs ---------------------------------------------------

# The default recipe's fuse-ort step breaks the dynamo export of GPT-2: inside onnxscript's
# optimize_for_ort, the mha2 fusion (fuse_mha2, after fuse_sdpa) replaces SDPA -> Transpose ->
# Reshape([batch*sequence, hidden]) with a MultiHeadAttention whose output is
# [batch, sequence, hidden], and GPT-2's Conv1D Gemm (node_Gemm_364) then gets a rank-3 input that
# onnxruntime rejects. Reported to the lead; the recipe and passes are not ours to change.
@pytest.fixture(scope="module")
def hf_exports(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Export each (kind, exporter) once per module and hand out the results."""
    root = tmp_path_factory.mktemp("hf")
    cache: dict[tuple[str, str], ExportResult] = {}

    def get(kind: str, exporter: str) -> ExportResult:
        if (kind, exporter) not in cache:
            cache[kind, exporter] = export_tiny_hf_model(kind, root, exporter=exporter)
        return cache[kind, exporter]

    return get


_EXPECTED_IO = {
    "bert": (("input_ids", "attention_mask", "token_type_ids"), "last_hidden_state",
             [["batch", "sequence", 32]]),
    "gpt2": (("input_ids", "attention_mask"), "logits", [["batch", "sequence", 100]]),
    "llama": (("input_ids", "attention_mask"), "logits", [["batch", "sequence", 100]]),
    "vit": (("pixel_values",), "last_hidden_state", [["batch", 17, 32], ["batch", None, None]]),
}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("kind", HF_KINDS)
def test_hf_model_exports(kind: str, exporter: str, hf_exports: Any) -> None:
    result = hf_exports(kind, exporter)
    inputs, output, output_dims = _EXPECTED_IO[kind]
    assert result.exporter == exporter
    assert result.max_abs_error is not None and result.max_abs_error < 1e-4
    assert result.input_names == inputs and result.output_names == (output,)
    model = load_model(result.path)
    assert all(_dims(v)[0] == "batch" for v in model.graph.inputs)
    if kind != "vit":
        assert all(_dims(v) == ["batch", "sequence"] for v in model.graph.inputs)
    dims = _dims(model.graph.outputs[0])
    assert any(all(e is None or d == e for d, e in zip(dims, want)) for want in output_dims), dims


@pytest.mark.parametrize(("kind", "exporter"), [(kind, exporter) for kind in HF_KINDS for exporter in EXPORTERS])
def test_hf_export_survives_default_recipe(kind: str, exporter: str, hf_exports: Any) -> None:
    _optimize_and_verify(hf_exports(kind, exporter).path)


def test_hf_output_choice(tmp_path: Path) -> None:
    model_dir = save_tiny_hf_model("llama", tmp_path)
    result = export_hf_model(model_dir, tmp_path / "llama-hidden.onnx", output="last_hidden_state",
                             exporter="torchscript", sequence=8)
    assert result.output_names == ("last_hidden_state",)
    assert _dims(load_model(result.path).graph.outputs[0]) == ["batch", "sequence", 32]
    with pytest.raises(UsageError, match="no architecture with logits"):
        export_hf_model(save_tiny_hf_model("bert", tmp_path), tmp_path / "x.onnx", output="logits")
    with pytest.raises(UsageError, match="output must be"):
        export_hf_model(model_dir, tmp_path / "x.onnx", output="pooler_output")
    with pytest.raises(InputError, match="no such model directory"):
        export_hf_model(tmp_path / "nowhere", tmp_path / "x.onnx")
    with pytest.raises(UsageError, match="exceeds"):
        export_hf_model(model_dir, tmp_path / "x.onnx", sequence=1000)


# --- all-MiniLM-L6-v2 --------------------------------------------------------------------------


def _reference_embeddings(model_dir: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """sentence-transformers' mean pooling and normalisation, computed in torch."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        hidden = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state
        mask = torch.from_numpy(feeds["attention_mask"]).unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


@pytest.mark.slow
def test_minilm_sentence_embedder_matches_torch_pooling(tmp_path: Path) -> None:
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import minilm_dir

    try:
        model_dir = minilm_dir()
    except UsageError as exc:
        pytest.skip(str(exc))
    result = export_sentence_embedder(model_dir, tmp_path / "minilm.onnx")
    assert result.output_names == ("sentence_embedding",)
    assert result.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minilm.onnx"]
    feeds = tokenize(model_dir, stdlib_sentences(6, seed=3), sequence=64)
    (embeddings,) = make_session(result.path).run(["sentence_embedding"], feeds)
    assert embeddings.shape == (6, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embeddings, _reference_embeddings(model_dir, feeds), atol=1e-4)
