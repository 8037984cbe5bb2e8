"""Output-preserving cleanup passes: constant folding, dead code, no-ops, shapes, duplicates."""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer
from onnxscript import rewriter
from onnxscript.rewriter.rules import common as rules

from graphopt.errors import UsageError
from graphopt.passes import GraphoptPass, PassSettings, register_pass, setting

__all__ = [
    "DeduplicatePass",
    "EliminateNoOpsPass",
    "FoldConstantsPass",
    "FoldConstantsSettings",
    "RemoveDeadCodePass",
    "SimplifyShapesPass",
]


class _SkipOverridableInitializerNotice(logging.Filter):
    """onnx_ir warns once per initializer that is also a graph input (common in IR < 4 models) each
    time initializers are deduplicated; skipping them is the correct behaviour, not a problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "as it is a graph input or output" not in str(record.msg)


logging.getLogger(common_passes.DeduplicateInitializersPass.__module__).addFilter(_SkipOverridableInitializerNotice())


def _run_all(model: ir.Model, passes: list[ir.passes.PassBase]) -> bool:
    modified = False
    for pass_ in passes:
        modified = pass_(model).modified or modified
    return modified


@dataclasses.dataclass(frozen=True)
class FoldConstantsSettings(PassSettings):
    shape_inference: bool = setting(True, "run ONNX shape inference while folding")
    input_size_limit: int = setting(1 << 20, "largest constant input (elements) a folded node may read")
    output_size_limit: int = setting(1 << 22, "largest tensor (elements) folding may create")

    def validate(self) -> None:
        if self.input_size_limit <= 0 or self.output_size_limit <= 0:
            raise UsageError("fold-constants: size limits must be positive")


@register_pass
class FoldConstantsPass(GraphoptPass[FoldConstantsSettings]):
    """Evaluate nodes whose inputs are all constant: ``op(c1, ..., cn) -> c``.

    Nodes left unused by folding are removed, and ``Constant`` nodes holding more than 16 elements
    become initializers (``Constant(value=t) -> initializer t``). Also folds shape computations
    that shape inference makes static (``Shape(x) -> c`` when the shape of ``x`` is known).
    Tensors above ``output_size_limit`` elements stay computed at run time.
    """

    name = "fold-constants"
    Settings = FoldConstantsSettings

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = onnxscript.optimizer.fold_constants(
            model,
            onnx_shape_inference=self.settings.shape_inference,
            input_size_limit=self.settings.input_size_limit,
            output_size_limit=self.settings.output_size_limit,
        )
        if result.modified:
            common_passes.RemoveUnusedNodesPass()(model)  # the constants that were folded away
        lifted = common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16)(model)
        return ir.passes.PassResult(model, result.modified or lifted.modified)


@register_pass
class RemoveDeadCodePass(GraphoptPass[PassSettings]):
    """Drop nodes, functions and opset imports that no graph output depends on."""

    name = "remove-dead-code"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = _run_all(
            model,
            [
                common_passes.RemoveUnusedNodesPass(),
                common_passes.RemoveUnusedFunctionsPass(),
                common_passes.RemoveUnusedOpsetsPass(),
            ],
        )
        return ir.passes.PassResult(model, modified)


class _IdentityEliminationPass(common_passes.IdentityEliminationPass):
    """onnx_ir's Identity elimination, except where removing ``y = Identity(x)`` with ``y`` a graph
    output would rename ``x`` while ``x`` is itself a graph output (the graph would list one value
    twice; onnxruntime's Scan then returns wrong results) or a value of an enclosing graph."""

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if node.op_type == "Identity" and node.domain == "" and len(node.inputs) == 1 and len(node.outputs) == 1:
            x, y = node.inputs[0], node.outputs[0]
            if x is not None and y.is_graph_output():
                producer = x.producer()
                owner = producer.graph if producer is not None else x.graph
                if x.is_graph_output() or owner is not node.graph:
                    return False
        return bool(super()._try_eliminate_identity_node(node))


_NO_OP_RULES = (
    rules.add_0_rule,
    rules.sub_0_rule,
    rules.mul_by_1_rule,
    rules.div_by_1_rule,
    rules.dropout_zero_rule,
    rules.dropout_inference_rule,
    rules.no_op_cast_rule,
    rules.no_op_expand_rule,
    rules.no_op_transpose_rule,
    rules.no_op_static_scatter_nd_rule,
    rules.no_op_dynamic_scatter_nd_rule,
)


@register_pass
class EliminateNoOpsPass(GraphoptPass[PassSettings]):
    """Remove nodes that return their input unchanged.

    ``Identity(x) -> x``, ``Add(x, 0) -> x``, ``Mul(x, 1) -> x``, ``Dropout(x) -> x`` (inference),
    ``Cast(x, to=dtype(x)) -> x``, ``Transpose(x, perm=identity) -> x``, ``Expand(x, shape(x)) -> x``.
    Graph outputs keep their names.
    """

    name = "remove-no-ops"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # The rules replace a no-op by Identity, which the elimination pass then removes.
        modified = _run_all(
            model,
            [
                rewriter.RewritePass(list(_NO_OP_RULES)),
                _IdentityEliminationPass(),
            ],
        )
        return ir.passes.PassResult(model, modified)


_SHAPE_RULES = (
    rules.reshape_reshape_rule,
    rules.unsqueeze_unsqueeze_rule,
    rules.squeeze_reshape_1d_rule,
    rules.cast_cast_rule,
    rules.transpose_transpose_rule,
    rules.flatten_to_reshape_rule,
    rules.collapse_slice_rule,
    rules.collapse_slice2_rule,
    rules.slice_split_rule,
    rules.materialize_reshape_shape_rule,
    rules.cast_constant_of_shape_rule,
    rules.cast_constant_of_shape_without_value_rule,
    rules.one_reshape_matmul_reshape_rule,
    rules.two_reshapes_matmul_reshape_rule,
    *rules.expand_before_binary_op_rules,
)


@register_pass
class SimplifyShapesPass(GraphoptPass[PassSettings]):
    """Collapse chains of shape-only ops.

    ``Reshape(Reshape(x, s1), s2) -> Reshape(x, s2)``, ``Unsqueeze(Unsqueeze(x, a), b) -> Unsqueeze(x, a+b)``,
    ``Transpose(Transpose(x, p), q) -> Transpose(x, p∘q)``, full-range ``Slice(x) -> x``,
    ``Reshape(x, Concat(Shape(x)[i], ...)) -> Reshape(x, c)`` when the dims are known.
    Rules that need shapes use those already on the values: run it after ``fold-constants``,
    which infers them.
    """

    name = "simplify-shapes"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # Rules that cancel out (Transpose pairs, full Slices) leave an Identity; remove it here.
        modified = _run_all(model, [rewriter.RewritePass(list(_SHAPE_RULES)), _IdentityEliminationPass()])
        return ir.passes.PassResult(model, modified)


@register_pass
class DeduplicatePass(GraphoptPass[PassSettings]):
    """Merge identical initializers and common subexpressions: ``f(x), f(x) -> y = f(x); y, y``."""

    name = "deduplicate"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = _run_all(model, [common_passes.DeduplicateInitializersPass()])
        modified = _run_all(model, [common_passes.CommonSubexpressionEliminationPass()]) or modified
        return ir.passes.PassResult(model, modified)
