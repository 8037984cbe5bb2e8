"""Architecture search: search spaces that emit ONNX graphs (:mod:`graphopt.nas.spaces`)."""

__all__: list[str] = []
