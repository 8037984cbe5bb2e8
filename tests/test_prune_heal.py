"""Healing pruned graphs: ``graphopt prune`` then ``graphopt finetune`` towards the unpruned graph.

Distillation (cosine loss, teacher = the unpruned transformer) must lower the held-out loss and raise
the held-out cosine measured in onnxruntime, without changing the pruned architecture; on a pruned CNN,
task loss (cross-entropy on labels) must raise held-out accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.cli import main
from graphopt.executor import finetune
from graphopt.feeds import save_feeds
from graphopt.passes import create_pass
from graphopt.prune import parameter_count
from graphopt.runtime import make_session
from tests.rewrites.prune._toy import toy_cnn, toy_transformer, transformer_feeds


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine over the last axis."""
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).mean())


def test_finetune_heals_a_pruned_transformer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher, pruned, healed = tmp_path / "teacher.onnx", tmp_path / "pruned.onnx", tmp_path / "healed.onnx"
    ir.save(toy_transformer(layers=2), teacher)
    train, held = transformer_feeds(batch=96, seed=1), transformer_feeds(batch=32, seed=2)
    save_feeds(train, tmp_path / "train.npz")
    save_feeds(held, tmp_path / "held.npz")
    assert main(["prune", str(teacher), "-o", str(pruned), "--heads", "0.5", "--mlp", "0.5", "--importance",
                 "activation", "--calib", str(tmp_path / "train.npz")]) == 0
    capsys.readouterr()
    code = main(["finetune", str(pruned), "-o", str(healed), "--data", str(tmp_path / "train.npz"), "--teacher",
                 str(teacher), "--eval-data", str(tmp_path / "held.npz"), "--loss", "cosine", "--steps", "40",
                 "--lr", "0.02", "--batch-size", "16", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["loss_after"] < 0.5 * report["loss_before"]  # held-out distillation loss
    assert report["last_loss"] < report["first_loss"]

    reference = make_session(teacher).run(None, held)[0]
    before = _cosine(make_session(pruned).run(None, held)[0], reference)
    after = _cosine(make_session(healed).run(None, held)[0], reference)
    assert before < 0.95 and after > before + 0.5 * (1 - before)  # at least half of the lost fidelity back
    assert 1 - after == pytest.approx(report["loss_after"], abs=1e-4)  # the report is what onnxruntime sees
    # Healing changes values only: same pruned architecture, same parameter count.
    pruned_model, healed_model = ir.load(pruned), ir.load(healed)
    assert parameter_count(healed_model) == parameter_count(pruned_model) < parameter_count(ir.load(teacher))
    assert [n.op_type for n in healed_model.graph] == [n.op_type for n in pruned_model.graph]


def test_label_finetuning_restores_the_accuracy_of_a_pruned_cnn() -> None:
    teacher = toy_cnn()
    rng = np.random.default_rng(0)
    images = rng.standard_normal((320, 3, 8, 8)).astype(np.float32)
    logits = make_session(teacher).run(None, {"x": images})[0]
    # Classes of the unpruned network with its output bias shifted so that all five occur.
    labels = (logits - logits.mean(0)).argmax(-1)
    assert np.bincount(labels, minlength=5).min() >= 10
    train, held = slice(0, 256), slice(256, 320)
    student = teacher.clone()
    pass_ = create_pass("prune-channels", {"fraction": 0.5, "importance": "magnitude"})
    assert pass_(student).modified

    def accuracy(model: ir.Model) -> float:
        return float((make_session(model).run(None, {"x": images[held]})[0].argmax(-1) == labels[held]).mean())

    before = accuracy(student)
    result = finetune(student, {"x": images[train], "y": labels[train]}, trainable="all", steps=30, lr=0.03,
                      batch_size=32, loss="ce", eval_data={"x": images[held], "y": labels[held]})
    assert result.loss_after < result.loss_before
    assert accuracy(student) > before + 0.1
