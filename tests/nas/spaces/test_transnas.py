"""TransNAS-Bench-101 micro and macro encoders: net-code notation, space sizes, and graphs that run."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import InputError
from graphopt.nas.spaces import get_space, trainable_parameter_count
from graphopt.nas.spaces.transnas import TransNASMacroSpace, TransNASMicroSpace
from graphopt.predict import encode_graph, structural_features
from tests.nas.spaces._helpers import images, model_bytes, run_model

MICRO = TransNASMicroSpace()
MACRO = TransNASMacroSpace()


def test_space_sizes_match_the_benchmark() -> None:
    micro = list(MICRO.enumerate())
    macro = list(MACRO.enumerate())
    assert len(set(micro)) == 4096 and len(set(macro)) == 3256  # as published (7,352 architectures in all)
    assert {len(str(a)) for a in macro} == {4, 5, 6}


def test_notation() -> None:
    arch = MICRO.parse("64-41414-3_32_120")
    assert arch == (3, 3, 2, 1, 2, 0) and MICRO.to_string(arch) == "64-41414-3_32_120"
    assert MACRO.parse("64-123412-basic") == "123412" and MACRO.to_string("1134") == "64-1134-basic"
    for space, text in [(MICRO, "64-41414-4_33_333"), (MICRO, "64-41414-3_33"), (MICRO, "64-1111-3_33_333"),
                        (MICRO, "32-41414-3_33_333"), (MACRO, "64-1111-basic"), (MACRO, "64-4444-basic"),
                        (MACRO, "64-123-basic"), (MACRO, "64-1234-3_33_333"), (MACRO, "basic")]:
        with pytest.raises(InputError):
            space.parse(text)


def test_sample_one_hot_registry() -> None:
    for space, size in [(MICRO, 24), (MACRO, 30)]:
        archs = space.sample(np.random.default_rng(0), 10)
        assert archs == space.sample(np.random.default_rng(0), 10)
        assert all(space.parse(space.to_string(a)) == a for a in archs)
        assert space.one_hot(archs[0]).shape == (size,)
    assert isinstance(get_space("transnas-micro"), TransNASMicroSpace)
    assert isinstance(get_space("transnas-macro"), TransNASMacroSpace)


@pytest.mark.parametrize("code", ["64-41414-3_33_333", "64-41414-1_02_120", "64-41414-0_00_000"])
def test_micro_graphs_run(code: str) -> None:
    space = TransNASMicroSpace(channels=16, image_size=32, head="backbone")
    model = space.build(space.parse(code.replace("64-", "16-")))
    (out,) = run_model(model, images(size=32))
    assert out.shape == (2, 128, 1, 1)  # three modules double channels and halve the size after the /4 stem
    if code.endswith("0_00_000"):  # every cell outputs zeros
        assert not out.any()
    else:
        assert np.isfinite(out).all() and out.any()
    classifier = TransNASMicroSpace(channels=16, image_size=32)
    assert trainable_parameter_count(classifier.build(space.parse(code.replace("64-", "16-")))) == (
        trainable_parameter_count(model) + 75 * 128 + 75)


def test_micro_convs_follow_the_cell() -> None:
    model = MICRO.build(MICRO.parse("64-41414-3_02_100"))
    ops = [n.op_type for n in model.graph]
    # 10 cells: conv3x3 0->1, conv1x1 1->2, skip 0->3 (a factorized reduce in the 3 stride-2 cells: 2 convs)
    assert ops.count("Conv") == 2 + 10 * 2 + 3 * 2
    assert ops.count("Pad") == 3


def test_macro_graph_runs_and_counts_blocks() -> None:
    space = TransNASMacroSpace(image_size=64, num_classes=10)
    model = space.build("1324")
    ops = [n.op_type for n in model.graph]
    # 8 blocks x 2 convs, a projection shortcut in the first block of modules 3, 2, 4, and the 2 stem convs
    assert ops.count("Conv") == 2 + 16 + 3
    (out,) = run_model(model, images(size=64))
    assert out.shape == (2, 10) and np.isfinite(out).all()


def test_deterministic_build_encoding_features() -> None:
    small = TransNASMicroSpace(channels=16, image_size=32)
    arch = small.parse("16-41414-2_31_013")
    assert model_bytes(small.build(arch, seed=4)) == model_bytes(small.build(arch, seed=4))
    assert encode_graph(small.build(arch)) == encode_graph(small.build(arch, seed=9))
    assert structural_features(small.build(arch)) == structural_features(small.build(arch))
