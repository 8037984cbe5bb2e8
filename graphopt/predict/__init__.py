"""Performance prediction: ONNX-Net style text encodings of ONNX graphs and structural features.

``encode_graph(model, variant=...)`` writes any ONNX graph as operator chains (grammar in
:mod:`graphopt.predict.encoding`); ``structural_features(model)`` is a fixed-length vector
(keys :data:`FEATURE_NAMES`) to sit beside it.
"""

from graphopt.predict.encoding import FEATURE_NAMES, OP_VOCABULARY, VARIANTS, encode_graph, structural_features

__all__ = ["FEATURE_NAMES", "OP_VOCABULARY", "VARIANTS", "encode_graph", "structural_features"]
