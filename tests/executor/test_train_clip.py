"""finetune --trainable clip: the clipped-softmax gamma/zeta initializers (and nothing else) are trained
towards a teacher, written back, and onnxruntime agrees; a model without them is refused (exit 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.cli import main
from graphopt.errors import UsageError
from graphopt.executor import TorchExecutor, finetune
from graphopt.feeds import input_specs, save_feeds, synthesize_feeds
from graphopt.passes import create_pass
from graphopt.rewrites._markers import CLIP_PREFIX
from graphopt.runtime import make_session
from tests.rewrites.test_attention import ATTENTION

GAMMA, ZETA = f"{CLIP_PREFIX}0.gamma", f"{CLIP_PREFIX}0.zeta"


def _models(parameters: str = "layer") -> tuple[ir.Model, ir.Model]:
    """A teacher clipped with gamma -0.2, zeta 1.1 (constants) and a student starting at the identity."""
    teacher, student = ir.from_onnx_text(ATTENTION), ir.from_onnx_text(ATTENTION)
    assert create_pass("clipped-softmax", {"gamma": -0.2, "zeta": 1.1})(teacher).modified
    assert create_pass("clipped-softmax", {"gamma": 0.0, "parameters": parameters})(student).modified
    return teacher, student


def _data(model: ir.Model, n: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    return synthesize_feeds(input_specs(model), shapes={"x": (n, 6, 8), "mask": (n, 1, 1, 6)}, seed=seed)


@pytest.mark.parametrize("parameters", ["layer", "head"])
def test_clip_parameters_learn_the_teacher_clipping(parameters: str) -> None:
    teacher, student = _models(parameters)
    frozen = {k: v.const_value.numpy().copy() for k, v in student.graph.initializers.items()
              if not k.startswith(CLIP_PREFIX)}
    result = finetune(student, _data(student), teacher=teacher, trainable="clip", steps=80, lr=0.01,
                      batch_size=16, eval_data=_data(student, 32, seed=1))
    assert set(result.trainable) == {GAMMA, ZETA}
    assert result.parameters == (2 if parameters == "layer" else 4)
    assert result.loss_after < 0.3 * result.loss_before, result.to_dict()
    gamma = student.graph.initializers[GAMMA].const_value.numpy()
    assert np.all(gamma < -0.05)  # moved from 0 towards the teacher's -0.2
    after = {k: v.const_value.numpy() for k, v in student.graph.initializers.items() if not k.startswith(CLIP_PREFIX)}
    assert all(np.array_equal(frozen[k], after[k]) for k in frozen)  # only gamma and zeta changed
    held = _data(student, 8, seed=2)
    ours = make_session(student).run(None, held)[0]
    np.testing.assert_allclose(ours, TorchExecutor(student).run(held)["y"], atol=1e-5)


def test_clip_without_clip_parameters_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher, _ = _models()
    with pytest.raises(UsageError, match=r"no graphopt\.clip"):
        finetune(teacher, _data(teacher), teacher=teacher, trainable="clip", steps=1)
    paths = {k: tmp_path / f"{k}.onnx" for k in ("teacher", "student")}
    ir.save(teacher, paths["teacher"])
    ir.save(_models()[1], paths["student"])
    save_feeds(_data(teacher), tmp_path / "train.npz")
    out = tmp_path / "out.onnx"
    argv = ["--data", str(tmp_path / "train.npz"), "--teacher", str(paths["teacher"]), "--trainable", "clip",
            "--steps", "20", "--lr", "0.01"]
    assert main(["finetune", str(paths["teacher"]), "-o", str(out), *argv]) == 2
    assert "no graphopt.clip" in capsys.readouterr().err and not out.exists()
    assert main(["finetune", str(paths["student"]), "-o", str(out), *argv]) == 0
    assert out.exists() and ir.load(out).graph.initializers[GAMMA].const_value.numpy() < 0
