"""One error hierarchy for everything graphopt raises on purpose.

The CLI maps :class:`UsageError` and :class:`InputError` (and subclasses) to exit code 2 and
:class:`CheckFailed` to exit code 1, printing the message as one line.
"""

from __future__ import annotations

__all__ = [
    "CheckFailed",
    "ExportError",
    "GraphoptError",
    "InputError",
    "InvalidModelError",
    "PassError",
    "UnsupportedError",
    "UsageError",
    "one_line",
]


class GraphoptError(Exception):
    """Base class of all errors graphopt raises deliberately."""

    exit_code = 2


class UsageError(GraphoptError):
    """The command line or an API call was used wrongly (bad option, bad recipe)."""


class InputError(GraphoptError):
    """A user-supplied file or value is missing, unreadable or malformed."""


class InvalidModelError(InputError):
    """An ONNX model that cannot be parsed, or whose graph is not valid."""


class UnsupportedError(InputError):
    """Valid input that graphopt (or onnxruntime) cannot handle, e.g. an unknown operator."""


class PassError(GraphoptError):
    """A pass failed on a model it accepted."""


class ExportError(GraphoptError):
    """Exporting a torch / Hugging Face model to ONNX failed with every exporter."""


class CheckFailed(GraphoptError):
    """A verification or fidelity check ran and did not pass."""

    exit_code = 1


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message folded onto one line (runtimes often put the detail on line two)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
