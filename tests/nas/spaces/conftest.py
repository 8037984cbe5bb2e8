"""Fixtures for the search-space tests: the shared NAS benchmark data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nas.spaces._helpers import NASBENCH


@pytest.fixture
def nasbench() -> Path:
    """``../shared/data/nasbench`` from the project root; the test skips when it is not there."""
    if not NASBENCH.is_dir():
        pytest.skip(f"benchmark data not found at {NASBENCH}")
    return NASBENCH
