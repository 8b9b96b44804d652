"""How a bank turns every model's forecast into one per series and horizon: the best few by their running
backtest at that exact horizon, weighted by how close each one's error is to the best one's.

Model 0 is "last" (persistence): the fallback whenever no model qualifies, which argmin lands on when every
score is infinite, so no second pass is needed.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from sidecar.engine.models_base import F64
from sidecar.engine.regime import COLD_MIN_SCORED

MIN_SCORED = 5  # scores a model needs at a horizon before it can be chosen
TOP = 3  # forecasts averaged per series and horizon
TEMP = 0.05  # how fast a model's weight falls with its recent error relative to the best one's
LAST = 0  # the index of "last", the fallback


def choose(mae: F64, cnt: NDArray[np.uint16], pred: F64) -> NDArray[np.int64]:
    """Per (series, horizon): the model with the smallest recent error among those with a forecast.

    `mae`, `cnt`, `pred` are (k, M, ...); models scored fewer than MIN_SCORED times are not trusted yet."""
    # a model scored MIN_SCORED times has a finite error: only the prediction needs checking
    score = np.where((cnt >= MIN_SCORED) & (pred == pred), mae, np.inf)
    best: NDArray[np.int64] = np.argmin(score, axis=1)
    return best


def combine(mae: F64, cnt: NDArray[np.uint16], pred: F64, mae1: F64, cnt1: NDArray[np.uint16],
            order: NDArray[np.intp]) -> tuple[F64, NDArray[np.int64], NDArray[np.bool_], NDArray[np.bool_]]:
    """(k, H) forecast, the model with the most weight, where the choice was borrowed (the horizon has no
    scores of its own) and where it rests on one-step scores alone, from every model's (k, M, H)
    predictions.

    Choosing the single model with the smallest recent error throws away the runners-up, whose
    errors are often as small and partly independent; averaging the best TOP with weights
    exp(-(mae/best - 1)/TEMP) keeps the choice sharp when one model is clearly better and
    averages when several are close (checked on half the NAB files, confirmed on the other half).
    A horizon no model has been scored at yet is combined by the
    scores of the longest shorter horizon that has been, else by the one-step scores (`mae1`,
    `cnt1`): the models that follow the series are the best evidence there is, and "last" for every
    unscored horizon hides a climb toward a limit for an hour.
    """
    k, H = pred.shape[0], pred.shape[2]
    one_step = np.zeros((k, H), bool)
    ok: NDArray[np.bool_] = np.asarray(pred == pred)
    score = np.where((cnt >= MIN_SCORED) & ok, mae, np.inf)
    scored: NDArray[np.bool_] = np.asarray(np.isfinite(score).any(axis=1))   # (k, H)
    borrowed = ~scored
    if not scored.all():
        borrow = np.where((cnt1 >= COLD_MIN_SCORED), mae1, np.inf)   # (k, M): one step, then ...
        from_one = np.ones(k, bool)
        for j in order.tolist():                               # ... the longest scored shorter one
            cold = ~scored[:, j]
            if cold.any():
                score[:, :, j] = np.where(cold[:, None] & ok[:, :, j], borrow, score[:, :, j])
                one_step[:, j] = cold & from_one
            if scored[:, j].any():
                borrow = np.where(scored[:, j, None],
                                  np.where(np.isfinite(mae[:, :, j]), mae[:, :, j], np.inf), borrow)
                from_one &= cold
    top = np.argpartition(score, TOP - 1, axis=1)[:, :TOP]  # (k, TOP, H), in no particular order
    rows, cols = np.arange(k)[:, None, None], np.arange(H)[None, None, :]
    s_top, p_top = score[rows, top, cols], pred[rows, top, cols]
    best = s_top.min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        w = np.exp((1.0 - s_top / np.maximum(best, 1e-300)) / TEMP)
    w = np.where(np.isfinite(s_top), w, 0.0)
    wsum = w.sum(axis=1)
    mean = np.where(wsum > 0, (w * np.where(w > 0, p_top, 0.0)).sum(axis=1) / np.where(wsum > 0, wsum, 1.0),
                    pred[:, LAST])
    choice: NDArray[np.int64] = np.where(wsum > 0, top[rows[:, 0], np.argmax(w, axis=1), cols[:, 0]], LAST)
    return mean, choice, borrowed, one_step
