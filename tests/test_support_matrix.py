"""The support matrix in CI: every family x method cell behaves as ``docs/support.json`` records
(so the README's table is current), no cell is silently wrong, and the share of working cells holds."""

from __future__ import annotations

import json
import warnings

import pytest

from captum_attcat import METHODS

from support_matrix import FAMILIES, RECORD, run_family

RECORDED = json.loads(RECORD.read_text())


def test_the_record_covers_every_family_and_method() -> None:
    assert list(RECORDED) == [family.name for family in FAMILIES]
    for cells in RECORDED.values():
        assert sorted(cells) == sorted(METHODS)
    cells = [v for family in RECORDED.values() for v in family.values()]
    assert len(FAMILIES) >= 40
    assert sum(v == "ok" for v in cells) / len(cells) >= 0.95


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_family_cells_behave_as_recorded(family) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        measured = run_family(family)  # raises SilentlyWrong on any wrong result
    assert measured == RECORDED[family.name]
