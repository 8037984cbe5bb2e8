"""The interface every search space implements.

An architecture is a hashable value (usually a tuple); its canonical string form is what CSV
files, ``--archs`` files and the CLI use. A space builds the ONNX graph of an architecture
deterministically (same architecture, same seed -> byte-identical model).
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Iterator, Sequence

import numpy as np
import onnx_ir as ir

__all__ = ["SearchSpace"]


class SearchSpace(abc.ABC):
    """A family of architectures with a string notation and an ONNX builder."""

    #: short name used on the command line (``--space nb201``)
    name: str = ""

    @abc.abstractmethod
    def parse(self, text: str) -> Hashable:
        """Architecture from its string form; raise :class:`graphopt.errors.InputError` if malformed."""

    @abc.abstractmethod
    def to_string(self, arch: Hashable) -> str:
        """Canonical string form of ``arch`` (``parse(to_string(a)) == a``)."""

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator, count: int) -> list[Hashable]:
        """``count`` architectures drawn uniformly (with replacement) using ``rng``."""

    def enumerate(self) -> Iterator[Hashable]:
        """Every architecture of the space, where the space is small enough to list."""
        raise NotImplementedError(f"space {self.name!r} is too large to enumerate")

    @abc.abstractmethod
    def build(self, arch: Hashable, *, seed: int = 0) -> ir.Model:
        """The ONNX graph of ``arch`` (weights initialised from ``seed``)."""

    def one_hot(self, arch: Hashable) -> np.ndarray:
        """A fixed-length numeric vector of ``arch`` for baseline predictors."""
        raise NotImplementedError(f"space {self.name!r} has no one-hot encoding")

    def parse_many(self, lines: Sequence[str]) -> list[Hashable]:
        """Parse non-empty, non-comment lines."""
        return [self.parse(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]
