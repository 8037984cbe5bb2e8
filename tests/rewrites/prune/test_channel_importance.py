"""Activation importance of conv channels: invariant to ReLU rescaling, and better than chance on a trained CNN.

Regression for issue 5: scoring a channel by its mean ``|y_c|`` alone kept the "most active" channels of the
first convolution of the digits CNN, whose small activations were the ones its reader amplified most, and
pruned that CNN to chance accuracy (worse than random channels).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

from graphopt.passes import create_pass
from graphopt.rewrites.prune import channel_groups, prune_channel_group
from graphopt.rewrites.prune.channels import channel_scores
from graphopt.runtime import make_session
from tests.rewrites.prune._toy import toy_cnn

EPOCHS = 20
FEEDS = {"x": np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)}


def _set(model: ir.Model, name: str, array: np.ndarray) -> None:
    model.graph.initializers[name].const_value = ir.tensor(array.astype(np.float32))


def _array(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy().copy()  # type: ignore[union-attr]


def test_activation_scores_ignore_relu_rescaling() -> None:
    """``Relu(a*z) / a == Relu(z)`` for ``a > 0``: scaling a channel up and its reader's weights down is the same
    network, so it must keep the same channels."""
    model, scaled = toy_cnn(), toy_cnn()
    channel, factor = 2, 20.0
    w1, b1, w2 = _array(scaled, "c1.w"), _array(scaled, "c1.b"), _array(scaled, "c2.w")
    w1[channel] *= factor
    b1[channel] *= factor
    w2[:, channel] /= factor
    for name, array in (("c1.w", w1), ("c1.b", b1), ("c2.w", w2)):
        _set(scaled, name, array)
    run = [make_session(m).run(None, FEEDS)[0] for m in (model, scaled)]
    np.testing.assert_allclose(run[0], run[1], rtol=1e-4, atol=1e-5)
    before = channel_scores(model, channel_groups(model), "activation", FEEDS, 0)
    after = channel_scores(scaled, channel_groups(scaled), "activation", FEEDS, 0)
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-4)


def _digits_cnn() -> tuple[ir.Model, np.ndarray, np.ndarray, np.ndarray]:
    """conv8-relu-conv16-relu-maxpool-conv16-relu-mean-linear10 trained with torch on 75% of scikit-learn digits;
    returns the ONNX model, calibration images, test images and test labels."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(images, data.target, test_size=0.25, random_state=0,
                                                        stratify=data.target)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 16, 3, padding=1),
             torch.nn.Conv2d(16, 16, 3, padding=1)]
    linear = torch.nn.Linear(16, 10)

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(convs[1](torch.relu(convs[0](x))))
        return linear(torch.relu(convs[2](torch.nn.functional.max_pool2d(x, 2))).mean(dim=(2, 3)))

    params = [p for m in (*convs, linear) for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    generator = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        order = torch.randperm(len(xt), generator=generator)
        for i in range(0, len(xt), 64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(forward(xt[order[i:i + 64]]), yt[order[i:i + 64]]).backward()
            optimizer.step()
    torch.set_num_threads(threads)
    inits = [oh.make_tensor("axes", onnx.TensorProto.INT64, [2], [2, 3])]
    for prefix, module in (*((f"c{i}", conv) for i, conv in enumerate(convs)), ("fc", linear)):
        inits += [onnx.numpy_helper.from_array(tensor.detach().numpy(), f"{prefix}.{key[0]}")
                  for key, tensor in module.state_dict().items()]  # weight -> .w, bias -> .b
    nodes = [oh.make_node("Conv", ["x", "c0.w", "c0.b"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
             oh.make_node("Relu", ["c0"], ["r0"]),
             oh.make_node("Conv", ["r0", "c1.w", "c1.b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             oh.make_node("Relu", ["c1"], ["r1"]),
             oh.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             oh.make_node("Conv", ["p1", "c2.w", "c2.b"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             oh.make_node("Relu", ["c2"], ["r2"]),
             oh.make_node("ReduceMean", ["r2", "axes"], ["m"], keepdims=0),
             oh.make_node("Gemm", ["m", "fc.w", "fc.b"], ["logits"], transB=1)]
    graph = oh.make_graph(nodes, "digits", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 10])], inits)
    model = ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=9))
    return model, x_train[:256], x_test, y_test


@pytest.fixture(scope="module")
def digits() -> tuple[ir.Model, np.ndarray, np.ndarray, np.ndarray]:
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    return _digits_cnn()


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_activation_pruning_beats_random_on_a_trained_cnn(digits: tuple[ir.Model, np.ndarray, np.ndarray,
                                                                        np.ndarray], fraction: float) -> None:
    model, calib, x_test, y_test = digits

    def accuracy(method: str, seed: int = 0) -> float:
        pruned = model.clone()
        pass_ = create_pass("prune-channels", {"fraction": fraction, "importance": method, "seed": seed})
        pass_.feeds = {"x": calib}  # type: ignore[attr-defined]
        assert pass_(pruned).modified
        logits = make_session(pruned).run(None, {"x": x_test})[0]
        return float((logits.argmax(axis=1) == y_test).mean())

    unpruned = float((make_session(model).run(None, {"x": x_test})[0].argmax(axis=1) == y_test).mean())
    assert unpruned > 0.85
    random = np.mean([accuracy("random", seed) for seed in range(3)])
    assert accuracy("activation") > random


def _outputs(model: ir.Model) -> np.ndarray:
    return make_session(model).run(None, FEEDS)[0].astype(np.float64)


def _prune_last_conv(model: ir.Model, keep: list[int]) -> None:
    from graphopt.rewrites.prune.channels import channel_statistics

    group = channel_groups(model)[-1]
    means = [mean for mean, _ in channel_statistics(model, [group], FEEDS)[0]]
    assert prune_channel_group(model, group, keep, means)


def test_mean_compensation_keeps_the_mean_output_of_a_linear_reader() -> None:
    """The classifier reads pooled channels linearly: with the removed channels' means in its bias, its mean
    output over the calibration data is unchanged (without them it moves)."""
    model, plain = toy_cnn(), toy_cnn()
    reference = _outputs(model).mean(axis=0)
    _prune_last_conv(model, [1, 4, 6])
    assert prune_channel_group(plain, channel_groups(plain)[-1], [1, 4, 6])
    np.testing.assert_allclose(_outputs(model).mean(axis=0), reference, rtol=1e-5, atol=1e-5)
    assert np.abs(_outputs(plain).mean(axis=0) - reference).max() > 1e-2


def test_mean_compensation_adds_a_bias_where_the_reader_has_none() -> None:
    """A ``MatMul`` reader gets an ``Add`` after it; the mean output is kept as with a ``Gemm``."""
    model = toy_cnn()
    graph = model.graph
    gemm = next(n for n in graph if n.op_type == "Gemm")
    weight = _array(model, "fc.w").T
    w = ir.Value(name="fc.wt", const_value=ir.tensor(weight))
    graph.register_initializer(w)
    matmul = ir.node("MatMul", [gemm.inputs[0], w], name="fc_matmul")
    identity = ir.node("Identity", [matmul.outputs[0]], name="out")
    graph.insert_before(gemm, [matmul, identity])
    graph.outputs[0] = identity.outputs[0]
    graph.remove(gemm, safe=True)
    reference = _outputs(model).mean(axis=0)
    _prune_last_conv(model, [0, 2, 3, 7])
    assert any(n.op_type == "Add" for n in model.graph)
    np.testing.assert_allclose(_outputs(model).mean(axis=0), reference, rtol=1e-5, atol=1e-5)


def test_activation_pruning_keeps_a_valid_graph_when_a_reader_conv_has_no_bias() -> None:
    model = toy_cnn()
    conv2 = next(n for n in model.graph if n.name == "conv2")
    conv2.resize_inputs(2)
    pass_ = create_pass("prune-channels", {"fraction": 0.5, "importance": "activation"})
    pass_.feeds = FEEDS  # type: ignore[attr-defined]
    assert pass_(model).modified
    conv2 = next(n for n in model.graph if n.name == "conv2")
    bias = conv2.inputs[2].const_value.numpy()  # type: ignore[union-attr]
    assert bias.shape == (4,) and np.abs(bias).max() > 0
    assert _outputs(model).shape == (16, 5)
