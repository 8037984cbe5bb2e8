"""Atomic writes of the predictor's disk caches (graph features, zero-cost values, text embeddings)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_cache_file(path: Path, dump: Callable[[IO[Any]], None], *, binary: bool = False) -> None:
    """Write ``path`` through ``dump(handle)`` into a temporary file renamed into place; a cache that
    cannot be written is skipped (the value stays computed in memory)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            dump(handle)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
