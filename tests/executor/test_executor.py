"""TorchExecutor: parity with onnxruntime on the zoo, NB201 cells and real MiniLM exports; gradients
checked numerically; trainable selection; write-back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from graphopt._io import load_model
from graphopt.errors import InputError, UsageError
from graphopt.executor import TorchExecutor, select_trainable
from graphopt.feeds import input_specs, synthesize_feeds
from graphopt.runtime import make_session
from tests.executor._parity import graph, max_abs_diff, rand, with_initializers

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
# Slow on a shared CPU (AlexNet's 4096-wide Gemms in onnxruntime, the 224x224 ResNet-50 / DenseNet /
# Inception-v2 in both runtimes); SqueezeNet, ShuffleNet and Inception-v1 keep the zoo in the fast suite.
# VGG-19 and ZFNet-512 use only AlexNet's operators and take longer still, so they are left out.
HEAVY = {"bvlc_alexnet", "resnet50", "densenet121", "inception_v2"}
SKIPPED = {"vgg19", "zfnet512"}
ZOO = [
    pytest.param(name, marks=[pytest.mark.slow] if name in HEAVY else [])
    for name in sorted(p.stem[len("light_"):] for p in LIGHT.glob("light_*.onnx"))
    if name not in SKIPPED
]


def _randomized_zoo_model(name: str) -> ir.Model:
    """A light-zoo model with its ConstantOfShape weights (one value everywhere: the output would be
    uniform) replaced by seeded random initializers, and the logits before Softmax as an extra output."""
    model = load_model(LIGHT / f"light_{name}.onnx")
    graph_ = model.graph
    rng = np.random.default_rng(0)
    for node in list(graph_):
        if node.op_type == "ConstantOfShape" and node.inputs[0] is not None and node.inputs[0].const_value is not None:
            shape = tuple(int(d) for d in node.inputs[0].const_value.numpy())
            if len(shape) > 1:  # He-scaled weights; positive 1-d parameters (BatchNorm variances)
                array = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
            else:
                array = rng.uniform(0.5, 1.5, shape)
            value = ir.Value(name=f"{node.outputs[0].name}.random", const_value=ir.tensor(array.astype(np.float32)))
            graph_.register_initializer(value)
            node.outputs[0].replace_all_uses_with(value)
            graph_.remove(node, safe=True)
    for node in graph_:
        if node.op_type == "Softmax" and node.outputs[0].is_graph_output():
            graph_.outputs.append(node.inputs[0])  # type: ignore[arg-type]
    return model


@pytest.mark.parametrize("name", ZOO)
def test_matches_onnxruntime_on_the_light_zoo(name: str) -> None:
    model = _randomized_zoo_model(name)
    feeds = synthesize_feeds(input_specs(model), batch=1)
    assert len(model.graph.outputs) == 2 or name in {"densenet121"}  # densenet ends without a Softmax
    assert max_abs_diff(model, feeds, relative=True) <= 1e-5


def test_matches_onnxruntime_on_nb201_cells() -> None:
    from graphopt.nas.spaces import get_space

    space = get_space("nb201")
    for arch in space.sample(np.random.default_rng(0), 3):
        model = space.build(arch)
        feeds = synthesize_feeds(input_specs(model), batch=2)
        assert max_abs_diff(model, feeds, relative=True) <= 1e-5, arch


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_matches_onnxruntime_on_real_minilm(
    exporter: str, minilm_exports: dict[str, Path], sentences_feeds: tuple[dict[str, np.ndarray], ...]
) -> None:
    feeds = {k: v[:8] for k, v in sentences_feeds[0].items()}
    model = load_model(minilm_exports[exporter])
    assert max_abs_diff(model, feeds) <= 1e-5
    # The onnxruntime-fused graph (Attention, SkipLayerNormalization, BiasGelu where they match).
    from graphopt.recipes import NAMED_RECIPES, apply_recipe

    apply_recipe(model, NAMED_RECIPES["default"])
    assert max_abs_diff(model, feeds) <= 1e-5


# ---- gradients ----------------------------------------------------------------------------------


def _gradcheck(model: ir.Model, feeds: dict[str, np.ndarray]) -> None:
    """Analytic gradients of every output w.r.t. the float inputs and all initializers, in float64,
    against finite differences."""
    executor = TorchExecutor(model, trainable="all").double()
    params = dict(executor.named_parameters())
    names = list(params)
    float_inputs = [k for k, v in feeds.items() if v.dtype.kind == "f"]
    fixed = {k: torch.from_numpy(v) for k, v in feeds.items() if k not in float_inputs}
    args = [torch.tensor(feeds[k], dtype=torch.float64, requires_grad=True) for k in float_inputs]
    args += [params[n].detach().clone().requires_grad_(True) for n in names]

    def run(*values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = dict(zip(float_inputs, values[: len(float_inputs)])) | fixed
        state = dict(zip(names, values[len(float_inputs) :]))
        out = torch.func.functional_call(executor, state, (inputs,))
        return tuple(v for v in out.values() if v.is_floating_point())

    assert torch.autograd.gradcheck(run, tuple(args), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradients_of_a_transformer_block() -> None:
    text = graph(
        "h = MatMul(x, w)\nb = Add(h, c)\ne = Div(b, two)\nf = Erf(e)\ng = Mul(b, f)\n"
        "n = LayerNormalization(g, s, o)\nt = Transpose <perm = [0, 2, 1]> (n)\nq = MatMul(n, t)\ny = Softmax(q)\n"
        "k = Gather <axis = 1> (y, i)\nz = ReduceMean <keepdims = 0> (k, ax)",
        "float[2, 3, 4] x, float[4, 5] w, float[5] c, float two, float[5] s, float[5] o, int64[2] i, int64[1] ax",
        "float[2, 3, 3] y, float[2, 3] z",
    )
    model = with_initializers(text, {"w": rand(4, 5), "c": rand(5, seed=1), "two": np.array(1.4142135, np.float32),
                                     "s": rand(5, seed=2), "o": rand(5, seed=3)})
    _gradcheck(model, {"x": rand(2, 3, 4, seed=4), "i": np.array([2, 0]), "ax": np.array([-1])})


def test_gradients_of_a_conv_stage() -> None:
    text = graph(
        "c = Conv <pads = [1, 1, 1, 1], strides = [2, 1]> (x, w, b)\nn = BatchNormalization(c, s, o, m, v)\n"
        "r = Tanh(n)\np = AveragePool <kernel_shape = [2, 2]> (r)\nf = Flatten(p)\ny = Gemm <transB = 1> (f, g, gb)",
        "float[2, 2, 6, 5] x, float[3, 2, 3, 3] w, float[3] b, float[3] s, float[3] o, float[3] m, float[3] v, "
        "float[4, 24] g, float[4] gb",
        "float[2, 4] y",
    )
    model = with_initializers(text, {
        "w": rand(3, 2, 3, 3), "b": rand(3, seed=1), "s": rand(3, seed=2), "o": rand(3, seed=3),
        "m": rand(3, seed=4), "v": rand(3, seed=5, low=0.5), "g": rand(4, 24, seed=6), "gb": rand(4, seed=7),
    })
    _gradcheck(model, {"x": rand(2, 2, 6, 5, seed=8)})


def test_gradients_through_fused_attention() -> None:
    text = graph(
        "a = com.microsoft.Attention <num_heads = 2> (x, w, b, m)\n"
        "y = com.microsoft.SkipLayerNormalization(a, x, s, o)\nz = com.microsoft.BiasGelu(y, o)",
        "float[2, 4, 6] x, float[6, 18] w, float[18] b, int32[2, 4] m, float[6] s, float[6] o", "float[2, 4, 6] z",
        ms=True,
    )
    values = {"w": rand(6, 18), "b": rand(18, seed=1), "s": rand(6, seed=2), "o": rand(6, seed=3)}
    model = with_initializers(text, values)
    _gradcheck(model, {"x": rand(2, 4, 6, seed=4), "m": np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.int32)})


# ---- trainable selection and write-back -------------------------------------------------------------

MLP = graph("h = MatMul(x, w1)\nr = Relu(h)\ny = MatMul(r, w2)", "float[N, 4] x, float[4, 8] w1, float[8, 3] w2",
            "float[N, 3] y")


def _mlp() -> ir.Model:
    return with_initializers(MLP, {"w1": rand(4, 8), "w2": rand(8, 3, seed=1)})


def test_trainable_selection_by_name_glob_and_marker() -> None:
    model = _mlp()
    assert select_trainable(model, "all") == ["w1", "w2"]
    assert select_trainable(model, "w2") == ["w2"]
    assert select_trainable(model, ["w*"]) == ["w1", "w2"]
    assert select_trainable(model, None) == []
    with pytest.raises(UsageError, match="'adapters' selects no"):
        select_trainable(model, "adapters")
    with pytest.raises(UsageError, match="'nope' selects no"):
        select_trainable(model, "w1,nope")
    import graphopt.rewrites  # noqa: F401  (registers the adapter passes)
    from graphopt.passes import create_pass

    create_pass("lora", {"targets": (), "pattern": ".*", "rank": 2})(model)
    chosen = select_trainable(model, "adapters")
    assert chosen and all(n.startswith("graphopt.adapter.") for n in chosen)
    executor = TorchExecutor(model, trainable="adapters")
    assert [n for n, _ in executor.named_trainable_parameters()] == chosen
    assert sum(1 for _ in executor.parameters()) == len(chosen)


def test_write_back_runs_in_onnxruntime_with_the_trained_values() -> None:
    model = _mlp()
    executor = TorchExecutor(model, trainable="w2")
    with torch.no_grad():
        for _, param in executor.named_trainable_parameters():
            param.add_(0.25)
    feeds = {"x": rand(5, 4, seed=9)}
    expected = executor.run(feeds)["y"]
    before = make_session(model).run(None, feeds)[0]
    written = executor.write_back()
    assert written is model
    assert written.graph.initializers["w2"].const_value.dtype == ir.DataType.FLOAT
    after = make_session(written).run(None, feeds)[0]
    np.testing.assert_allclose(after, expected, atol=1e-6)
    assert np.abs(before - after).max() > 0.1


def test_missing_feed_and_bad_shapes_are_one_line_input_errors() -> None:
    executor = TorchExecutor(_mlp())
    with pytest.raises(InputError, match="missing feed for input 'x'"):
        executor.run({})
    with pytest.raises(InputError, match=r"MatMul node .* failed") as info:
        executor.run({"x": rand(2, 5)})
    assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "llama", "vit"])
def test_matches_onnxruntime_on_tiny_hf_exports(kind: str, tmp_path: Path) -> None:
    """Decoder (causal masks, rotary embeddings) and vision families, random weights, dynamo export."""
    from tests._models import export_tiny_hf_model

    model = load_model(export_tiny_hf_model(kind, tmp_path, exporter="dynamo", verify=False).path)
    feeds = synthesize_feeds(input_specs(model), batch=2, sequence=16)
    assert max_abs_diff(model, feeds, relative=True) <= 1e-5
