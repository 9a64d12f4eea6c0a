"""Scorers: pure functions in a registry; NaN outside the scored mask; unknown names list the valid ones."""

from __future__ import annotations

import numpy as np
import pytest

from tokenclean.errors import ConfigError
from tokenclean.scoring.scorers import SCORERS, get_scorer, register

BASE = np.array([np.nan, 2.0, 0.5, np.nan, 3.0], dtype=np.float32)
REF = np.array([np.nan, 1.5, 1.0, np.nan, 0.25], dtype=np.float32)
MASK = ~np.isnan(BASE)


def test_token_cleaning_is_base_minus_ref() -> None:
    out = get_scorer("token_cleaning")(BASE, REF, MASK)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[MASK], [0.5, -0.5, 2.75])
    assert np.isnan(out[~MASK]).all()


@pytest.mark.parametrize(("name", "want"), [("base_loss", BASE), ("ref_loss", REF)])
def test_loss_scorers(name: str, want: np.ndarray) -> None:
    out = get_scorer(name)(BASE, REF, MASK)
    np.testing.assert_array_equal(out[MASK], want[MASK])
    assert np.isnan(out[~MASK]).all()
    assert out is not BASE and out is not REF  # never aliases its inputs


def test_mask_forces_nan_even_where_losses_exist() -> None:
    mask = MASK.copy()
    mask[1] = False
    assert np.isnan(get_scorer("token_cleaning")(BASE, REF, mask)[1])


def test_unknown_scorer_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as e:
        get_scorer("rho2")
    msg = str(e.value)
    assert "unknown scorer 'rho2'" in msg
    for name in ("base_loss", "ref_loss", "token_cleaning"):
        assert name in msg


def test_registry_flags_and_duplicates() -> None:
    assert get_scorer("token_cleaning").needs_reference
    assert not get_scorer("base_loss").needs_reference
    with pytest.raises(ValueError, match="already registered"):
        register("base_loss", needs_reference=False, doc="dup")(lambda b, r, m: b)


def test_registering_a_new_scorer() -> None:
    @register("_test_ratio", needs_reference=True, doc="base / ref")
    def ratio(b: np.ndarray, r: np.ndarray, m: np.ndarray) -> np.ndarray:
        return b / r

    try:
        np.testing.assert_allclose(get_scorer("_test_ratio")(BASE, REF, MASK)[MASK], [4 / 3, 0.5, 12.0])
    finally:
        del SCORERS["_test_ratio"]
