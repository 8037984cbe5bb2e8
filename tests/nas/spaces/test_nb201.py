"""NAS-Bench-201: notation, enumeration, and built graphs checked against the published parameter counts."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import cast

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import InputError
from graphopt.nas.spaces import get_space, trainable_parameter_count
from graphopt.nas.spaces.nb201 import NB201Space
from graphopt.predict import encode_graph, structural_features
from tests.nas.spaces._helpers import images, model_bytes, run_model

SPACE = NB201Space()


def _rows(nasbench: Path, name: str) -> list[dict[str, str]]:
    with open(nasbench / name, newline="") as f:
        return list(csv.DictReader(f))


def test_params_match_published(nasbench: Path) -> None:
    rows = _rows(nasbench, "nb201_zc_proxies.csv")
    picked = [rows[i] for i in np.random.default_rng(0).choice(len(rows), 30, replace=False)]
    published = {float(row["params"]) for row in picked}
    assert len(published) > 10  # the sample covers many different cells
    for row in picked:
        arch = SPACE.parse(row["net"])
        count = trainable_parameter_count(SPACE.build(arch))
        # the column is in millions, rounded to 6 decimals: exact to the parameter
        assert round(count / 1e6, 6) == pytest.approx(float(row["params"]), abs=1e-9), row["net_str"]


def test_both_notations_agree(nasbench: Path) -> None:
    for row in _rows(nasbench, "nb201_zc_proxies.csv")[:200]:
        arch = SPACE.parse(row["net"])
        assert SPACE.parse(row["net_str"]) == arch
        assert SPACE.to_string(arch) == row["net"]
        assert SPACE.to_net_str(arch) == row["net_str"]


def test_enumerate_lists_the_benchmark_in_order(nasbench: Path) -> None:
    rows = _rows(nasbench, "nb201_val_acc.csv")
    archs = list(SPACE.enumerate())
    assert len(archs) == len(set(archs)) == 15625
    assert [SPACE.to_string(a) for a in archs] == [row["arch"] for row in rows]


def test_parse_rejects_malformed() -> None:
    for text in ["(0, 1, 2)", "(5, 0, 0, 0, 0, 0)", "conv", "|nor_conv_3x3~0|+|none~0|none~1|",
                 "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|",
                 "|none~0|+|none~1|none~0|+|none~0|none~1|none~2|"]:
        with pytest.raises(InputError):
            SPACE.parse(text)
    assert SPACE.parse(" [2,0,3,1,4,2] ") == (2, 0, 3, 1, 4, 2)


def test_sample_one_hot_and_registry() -> None:
    a = cast("list[tuple[int, ...]]", SPACE.sample(np.random.default_rng(3), 50))
    assert a == SPACE.sample(np.random.default_rng(3), 50)
    assert len(set(a)) > 40 and all(len(x) == 6 and all(0 <= v < 5 for v in x) for x in a)
    vec = SPACE.one_hot((2, 0, 3, 1, 4, 2))
    assert vec.shape == (30,) and vec.sum() == 6 and vec[2] == 1 and vec[5 + 0] == 1 and vec[25 + 2] == 1
    assert isinstance(get_space("nb201"), NB201Space)


def test_graph_keeps_the_cell_topology() -> None:
    arch = (2, 4, 0, 3, 1, 2)  # conv3x3, avgpool, skip, conv1x1, none, conv3x3
    model = SPACE.build(arch)
    ops = [n.op_type for n in model.graph]
    # stem + 2 reduction blocks (3 convs each) + 15 cells x 3 conv edges
    assert ops.count("Conv") == 1 + 2 * 3 + 15 * 3
    assert ops.count("AveragePool") == 2 + 15  # reduction shortcuts + one pool edge per cell
    assert ops.count("BatchNormalization") == 1 + 2 * 2 + 15 * 3 + 1
    assert "Mul" not in ops  # no node is all-zero in this cell
    assert model.metadata_props["graphopt.nas.arch"] == "(2, 4, 0, 3, 1, 2)"
    (out,) = run_model(model, images())
    assert out.shape == (2, 10) and np.isfinite(out).all()


def test_all_none_cell_cuts_the_input_off() -> None:
    model = SPACE.build((1, 1, 1, 1, 1, 1))
    (a,) = run_model(model, images(seed=0))
    (b,) = run_model(model, images(seed=1))
    np.testing.assert_array_equal(a, b)  # every cell outputs zeros: the logits cannot depend on the input
    (c,) = run_model(SPACE.build((1, 1, 0, 1, 1, 1)), images(seed=1))  # edge 1->4 is skip
    assert not np.allclose(a, c)


def test_build_is_deterministic_per_seed() -> None:
    arch = (3, 2, 0, 4, 1, 0)
    assert model_bytes(SPACE.build(arch, seed=7)) == model_bytes(SPACE.build(arch, seed=7))
    assert model_bytes(SPACE.build(arch, seed=7)) != model_bytes(SPACE.build(arch, seed=8))


def test_encoding_and_features_on_built_graphs() -> None:
    a, b = (2, 4, 0, 3, 1, 2), (2, 4, 0, 3, 1, 3)
    text = encode_graph(SPACE.build(a, seed=0))
    assert text == encode_graph(SPACE.build(a, seed=5))  # weights do not change the encoding
    assert text != encode_graph(SPACE.build(b))
    assert "Conv(_, Param[16,16,3,3])" in text and "In1:1x3x32x32" in text
    features = structural_features(SPACE.build(a))
    assert features == structural_features(SPACE.build(a))
    assert features["op_Conv"] == 52 and features["conv_width_max"] == 64
    assert features["parameter_count"] > trainable_parameter_count(SPACE.build(a))  # BN statistics included


def test_matches_the_torch_network() -> None:
    torch = pytest.importorskip("torch")
    from tests.nas.spaces._torch_nb201 import TorchNB201, load_onnx_weights

    arch = (2, 4, 0, 3, 1, 2)  # every operation once: conv3x3, avg pool, skip, conv1x1, none
    space = NB201Space(channels=8, cells_per_stage=2)
    model = space.build(arch, seed=3)
    rng = np.random.default_rng(0)
    for name, value in model.graph.initializers.items():  # BatchNorm statistics and affine away from identity
        if ".bn." in name or "lastact" in name:
            shape = value.const_value.shape.numpy()  # type: ignore[union-attr]
            positive = name.endswith(("running_var", "weight"))
            data = rng.uniform(0.5, 1.5, shape) if positive else rng.normal(0, 0.3, shape)
            value.const_value = ir.tensor(data.astype(np.float32), name=name)
    reference = TorchNB201(arch, c=8, n=2).eval()
    load_onnx_weights(reference, model)
    feeds = images(batch=3)
    (ours,) = run_model(model, feeds)
    with torch.no_grad():
        expected = reference(torch.from_numpy(feeds["input"])).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
