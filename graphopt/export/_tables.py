"""Operator support tables of execution providers that cannot be probed on this machine.

Encoded by hand from the providers' own documentation, so a check against them is structural:
it says what the documented kernel registry claims, not what a GPU ran.

* ``CUDA_OPS``: op names listed for ``CUDAExecutionProvider`` in onnxruntime's
  ``docs/OperatorKernels.md`` (generated from the registered kernels; the main branch read for
  onnxruntime 1.2x/1.3x). Types are not encoded per op: CUDA kernels cover float32 / float16
  (most also bfloat16 and double) and the integer types data-movement ops need; see
  :data:`CUDA_UNSUPPORTED_TYPES` for the coarse type rule applied instead.
* ``TENSORRT_OPS``: the support matrix of onnx-tensorrt's ``docs/operators.md`` for TensorRT
  10.15 (opsets 9 to 24), op name -> supported element types.
"""

from __future__ import annotations

__all__ = [
    "CUDA_OPS",
    "CUDA_TABLE_SOURCE",
    "CUDA_UNSUPPORTED_TYPES",
    "TENSORRT_MAX_OPSET",
    "TENSORRT_MIN_OPSET",
    "TENSORRT_OPS",
    "TENSORRT_TABLE_SOURCE",
]

CUDA_TABLE_SOURCE = "onnxruntime docs/OperatorKernels.md, CUDAExecutionProvider section (op names only)"
TENSORRT_TABLE_SOURCE = "onnx-tensorrt docs/operators.md, TensorRT 10.15 support matrix (opsets 9-24)"

_CUDA_ONNX = """
Abs Add Affine And ArgMax ArgMin Attention AveragePool BatchNormalization Cast Ceil Clip Compress Concat
ConcatFromSequence ConstantOfShape Conv ConvTranspose Cos Crop CumSum DepthToSpace DequantizeLinear Div Dropout
DynamicSlice Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual GridSample HardSigmoid HardSwish Identity If ImageScaler
InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop
MatMul MatMulInteger Max MaxPool MemcpyFromHost MemcpyToHost Min Mod Mul Neg NonZero Not OneHot Or PRelu Pad
ParametricSoftplus Pow QuantizeLinear RMSNormalization RNN RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign RotaryEmbedding Round ScaledTanh
Scan Scatter ScatterElements ScatterND Selu SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert
SequenceLength Shape Shrink Sigmoid Sign SimplifiedLayerNormalization Sin Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze
Upsample Where Xor
"""

_CUDA_MICROSOFT = """
Attention BeamSearch BiasAdd BiasDropout BiasGelu BiasSoftmax BiasSplitGelu BitmaskBiasDropout BitmaskDropout
ComplexMul ComplexMulConj ConvTransposeWithDynamicPads DecoderAttention DecoderMaskedMultiHeadAttention
DecoderMaskedSelfAttention DequantizeLinear DequantizeWithOrder DynamicTimeWarping EmbedLayerNormalization FastGelu
FusedConv FusedMatMul GatedRelativePositionBias GatherBlockQuantized Gelu GemmFloat8 GemmaRotaryEmbedding
GreedySearch GridSample GroupNorm GroupQueryAttention Inverse Irfft LongformerAttention MatMulBnb4 MatMulNBits MoE
MultiHeadAttention NGramRepeatBlock NhwcConv PackedAttention PackedMultiHeadAttention PagedAttention QAttention QMoE
QOrderedAttention QOrderedGelu QOrderedLayerNormalization QOrderedLongformerAttention QOrderedMatMul QuantizeLinear
QuantizeWithOrder QuickGelu RelativePositionBias RemovePadding RestorePadding Rfft RotaryEmbedding Sampling
SkipGroupNorm SkipLayerNormalization SkipSimplifiedLayerNormalization SparseAttention TransposeMatMul Trilu
UnfoldTensor WhisperBeamSearch
"""

CUDA_OPS: dict[str, frozenset[str]] = {
    "": frozenset(_CUDA_ONNX.split()),
    "com.microsoft": frozenset(_CUDA_MICROSOFT.split()),
}

CUDA_UNSUPPORTED_TYPES = frozenset({"STRING", "COMPLEX64", "COMPLEX128"})
"""Element types no CUDA kernel in the table accepts (strings stay on the CPU)."""

# TensorRT: op -> supported element types, as the support matrix lists them (onnx_ir DataType names).
_F = "FLOAT FLOAT16 BFLOAT16"
_FI = _F + " INT32 INT64"
_FIB = _FI + " BOOL"
_TRT_ROWS = {
    _F: """Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv ConvTranspose Cos Cosh
        CumSum Dropout Einsum Elu Erf Exp Floor Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool GroupNormalization GRU
        HardSigmoid HardSwish Hardmax ImageScaler InstanceNormalization IsInf LayerNormalization LeakyRelu Log
        LogSoftmax LRN LSTM LpNormalization LpPool MatMul MaxPool MeanVarianceNormalization PRelu ParametricSoftplus
        QuantizeLinear
        RandomNormal RandomNormalLike RandomUniform RandomUniformLike Reciprocal Resize RMSNormalization RNN
        RotaryEmbedding Round ScaledTanh Scan Selu Sigmoid Sin Sinh Softmax Softplus Softsign Sqrt Tan Tanh
        ThresholdedRelu Upsample""",
    _FI: """Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less LessOrEqual Max Min Mod Mul
        Neg Pad Pow Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
        ReduceSum ReduceSumSquare Relu Scatter ScatterElements ScatterND Shrink Sign SpaceToDepth Sub Sum TopK""",
    _FIB: """Concat Expand EyeLike Flatten Gather GatherElements GatherND Identity If Loop OneHot Reshape
        ReverseSequence Shape Size Slice Split Squeeze Tile Transpose Trilu Unsqueeze Where""",
    "BOOL": "And Not Or Xor",
    "FLOAT FLOAT16": """BlackmanWindow DeformConv GridSample HammingWindow HannWindow Mish NonMaxSuppression NonZero
        RoiAlign""",
    "FLOAT": "STFT",
    _F + " INT8 FLOAT8E4M3FN": "Attention",
    _FI + " UINT8 BOOL": "Cast CastLike",
    _FIB + " FLOAT8E4M3FN FLOAT4E2M1 INT4": "Constant ConstantOfShape",
    "INT8 INT4 FLOAT8E4M3FN FLOAT4E2M1": "DequantizeLinear",
    _FI + " INT8": "Gelu",
    _FI + " FLOAT8E4M3FN": "Mean",
    _F + " INT32": "TensorScatter",
}

TENSORRT_OPS: dict[str, frozenset[str]] = {
    op: frozenset(types.split()) for types, ops in _TRT_ROWS.items() for op in ops.split()
}
TENSORRT_MIN_OPSET = 9
TENSORRT_MAX_OPSET = 24
