"""The running backtest's packed pending forecasts: what `pack` keeps of a difference."""

from __future__ import annotations

import numpy as np

from sidecar.engine.scoring import BF16_NAN, COUNT_MAX, count_up, from_bf16, pack, to_bf16, unpack


def test_packed_differences_keep_eleven_significant_bits_whatever_the_rows_largest() -> None:
    rng = np.random.default_rng(7)
    d = rng.normal(size=(500, 21)) * 10.0 ** rng.uniform(-8, 12, size=(500, 1))
    d[:, 3] *= 1e6          # a blown-up model in every row: the others keep their own precision
    d[::7, 5] = np.nan
    vals, e = pack(d)
    assert vals.dtype == np.float16 and e.dtype == np.int8
    back = unpack(vals, e)
    assert np.array_equal(np.isnan(back), np.isnan(d))
    ok = np.isfinite(d) & (np.abs(d) >= np.ldexp(np.nanmax(np.abs(d), axis=1, keepdims=True), -24))
    assert np.all(np.abs(back[ok] - d[ok]) <= np.ldexp(np.abs(d[ok]), -11))


def test_rows_of_zeros_or_nan_pack_to_themselves() -> None:
    d = np.array([[0.0, 0.0, 0.0], [np.nan, np.nan, np.nan], [0.0, np.nan, -0.0]])
    back = unpack(*pack(d))
    assert np.array_equal(back, d, equal_nan=True)



def test_bfloat16_codes_keep_eight_significant_bits_and_float32s_range() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=2000) * 10.0 ** rng.uniform(-30, 30, size=2000)
    back = from_bf16(to_bf16(x)).astype(np.float64)
    assert np.all(np.abs(back - x) <= np.ldexp(np.abs(x), -8))
    special = np.array([np.nan, np.inf, -np.inf, 0.0])
    assert np.array_equal(from_bf16(to_bf16(special)), special.astype(np.float32), equal_nan=True)
    assert to_bf16(np.array([np.nan]))[0] == BF16_NAN


def test_scored_counts_saturate_instead_of_wrapping() -> None:
    cnt = np.array([0, 5, COUNT_MAX - 1, COUNT_MAX], np.uint16)
    up = count_up(cnt, np.array([True, False, True, True]))
    assert up.dtype == np.uint16
    assert up.tolist() == [1, 5, COUNT_MAX, COUNT_MAX]
