"""Performance prediction: ONNX-Net style text encodings of ONNX graphs, features and predictors.

``encode_graph(model, variant=...)`` writes any ONNX graph as operator chains (grammar in
:mod:`graphopt.predict.encoding`); ``structural_features(model)`` is a fixed-length vector
(keys :data:`FEATURE_NAMES`) to sit beside it, and ``live_features(model)`` (keys
:data:`LIVE_FEATURE_NAMES`) describes the computation that really reaches the output.
``train_predictor`` fits an ensemble predictor of accuracy or latency on (architecture or ONNX
graph, target) pairs (:mod:`~graphopt.predict.dataset` for labels and features,
:mod:`~graphopt.predict.models` and :mod:`~graphopt.predict.rankboost` for the regressors,
:mod:`~graphopt.predict.embed` for MiniLM embeddings of encodings, :mod:`~graphopt.predict.zero_cost` for
the opt-in ``zc`` features: graphopt's synflow, jacov, nwot on natural images); ``save_predictor`` /
``load_predictor`` store it in one file.
"""

from graphopt.predict.dataset import FEATURE_GROUPS, FeatureSpec, Featurizer, Labels, load_labels
from graphopt.predict.encoding import FEATURE_NAMES, OP_VOCABULARY, VARIANTS, encode_graph, structural_features
from graphopt.predict.liveness import LIVE_FEATURE_NAMES, live_features
from graphopt.predict.models import MODEL_KINDS, RegressionModel, create_model
from graphopt.predict.persistence import load_predictor, save_predictor
from graphopt.predict.predictor import Predictor, Scores, train_predictor
from graphopt.predict.ranking import kendall_tau, pairwise_logistic_loss, spearman
from graphopt.predict.zero_cost import ZC_METRICS, ZeroCostSpec, zero_cost_features

__all__ = [
    "FEATURE_GROUPS",
    "FEATURE_NAMES",
    "LIVE_FEATURE_NAMES",
    "MODEL_KINDS",
    "OP_VOCABULARY",
    "VARIANTS",
    "ZC_METRICS",
    "FeatureSpec",
    "Featurizer",
    "Labels",
    "Predictor",
    "RegressionModel",
    "Scores",
    "ZeroCostSpec",
    "create_model",
    "encode_graph",
    "kendall_tau",
    "live_features",
    "load_labels",
    "load_predictor",
    "pairwise_logistic_loss",
    "save_predictor",
    "spearman",
    "structural_features",
    "train_predictor",
    "zero_cost_features",
]
