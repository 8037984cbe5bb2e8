"""MetricExecutor: BatchNormalization modes, prunable weights, op capture."""

from __future__ import annotations

import pytest
import torch

from graphopt.errors import UsageError
from graphopt.executor import TorchExecutor
from graphopt.nas.metrics._context import MetricExecutor, prunable_weights
from tests.nas.metrics.conftest import reference


def test_prunable_weights_are_conv_and_gemm_weights(tiny):
    assert prunable_weights(tiny) == ["c1.weight", "c2.weight", "classifier.weight"]
    assert [n for n, _ in MetricExecutor(tiny).weights()] == prunable_weights(tiny)


@pytest.mark.parametrize("bn", ["train", "off"])
def test_bn_modes_match_torch(tiny, batch, bn):
    weights, forward = reference(tiny)
    x = torch.from_numpy(batch[0])
    got = MetricExecutor(tiny, bn=bn)({"input": x})["logits"]
    torch.testing.assert_close(got, forward(x, weights, bn=bn), rtol=1e-5, atol=1e-6)


def test_eval_mode_is_the_plain_executor(tiny, batch):
    x = torch.from_numpy(batch[0])
    with torch.no_grad():
        torch.testing.assert_close(MetricExecutor(tiny, bn="eval")({"input": x})["logits"],
                                   TorchExecutor(tiny)({"input": x})["logits"])


def test_capture_records_inputs_and_outputs(tiny, batch):
    executor = MetricExecutor(tiny, capture=("Relu",))
    executor({"input": torch.from_numpy(batch[0])})
    assert [op for op, *_ in executor.captured] == ["Relu", "Relu"]
    _, _, x, y = executor.captured[0]
    torch.testing.assert_close(y, torch.relu(x))


def test_unknown_bn_mode(tiny):
    with pytest.raises(UsageError, match="bn must be"):
        MetricExecutor(tiny, bn="batch")
