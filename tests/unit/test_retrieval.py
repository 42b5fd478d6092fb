"""The pure retrieval core: its doctests are its examples, and they must hold."""

from __future__ import annotations

import doctest

import council.retrieval


def test_doctests() -> None:
    result = doctest.testmod(council.retrieval)
    assert result.attempted > 0 and result.failed == 0
