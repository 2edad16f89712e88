"""Post-hoc probability calibration: Platt scaling per label, temperature scaling for multi-class.

A model can rank well (high AUROC) and still be over- or under-confident; a clinician reading
"0.9" should be able to trust that about 90 % of such records are positive. Both methods here are
fitted on *validation* records only (never the test split they are judged on) and change only
the probabilities, not the ranking:

* ``"platt"`` (multi-label, binary): per label ``p' = sigmoid(a * logit(p) + b)``, the two
  parameters fitted by maximum likelihood (Newton's method). With ``a > 0`` the order of the
  scores, and therefore AUROC/AUPRC, is unchanged.
* ``"temperature"`` (multi-class): ``p' = softmax(log(p) / T)`` with one temperature ``T > 0``
  minimising the negative log-likelihood; the argmax (accuracy, confusion matrix) is unchanged.

A calibration is a small JSON-able dict (``{"method": ..., ...}``) stored in the checkpoint's
``config.json`` under ``info.calibration`` (see :func:`hubert_ecg.evaluate.save_calibration`)
and applied with :func:`apply_calibration`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .tasks import find_task

__all__ = ["fit_platt", "fit_temperature", "fit_calibration", "apply_calibration", "CALIBRATION_METHODS"]

CALIBRATION_METHODS = ("platt", "temperature")
_EPS = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _platt_one(y: np.ndarray, z: np.ndarray, iters: int = 100) -> tuple[float, float]:
    """Maximum-likelihood (a, b) of sigmoid(a z + b) by Newton's method (tiny ridge for separable data)."""
    ridge = 1e-6 * len(y)

    def loss(a: float, b: float) -> float:
        t = a * z + b  # log(1 + e^t) - y t, computed stably
        return float((np.logaddexp(0.0, t) - y * t).sum() + 0.5 * ridge * (a - 1.0) ** 2)

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iters):
        p = _sigmoid(a * z + b)
        w = p * (1 - p)
        r = p - y
        grad = np.array([(r * z).sum() + ridge * (a - 1.0), r.sum()])
        hess = np.array([[(w * z * z).sum() + ridge, (w * z).sum()], [(w * z).sum(), w.sum() + 1e-12]])
        step = np.linalg.solve(hess, grad)
        # Damped Newton: halve the step until the loss does not increase (plain Newton can overshoot
        # from a = 1 when the model is far from calibrated).
        scale = 1.0
        while scale > 1e-6 and loss(a - scale * step[0], b - scale * step[1]) > current + 1e-12:
            scale *= 0.5
        a, b = a - scale * step[0], b - scale * step[1]
        current = loss(a, b)
        if np.abs(scale * step).max() < 1e-10:
            break
    return float(a), float(b)


def fit_platt(y_true: Any, y_score: Any) -> dict[str, Any]:
    """Per-label Platt scaling fitted on (validation) targets (N, L) or (N,) and probabilities.

    A label without both classes keeps the identity (a = 1, b = 0): nothing can be learned from it.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_score, dtype=np.float64)
    if y.shape != p.shape or y.ndim not in (1, 2) or len(y) == 0:
        raise ValueError(f"Platt scaling needs targets and probabilities of the same shape; got {y.shape}, {p.shape}")
    y2, z2 = y.reshape(len(y), -1), _logit(p.reshape(len(p), -1))
    a, b = [], []
    for j in range(y2.shape[1]):
        n_pos = y2[:, j].sum()
        if n_pos == 0 or n_pos == len(y2):
            a.append(1.0)
            b.append(0.0)
            continue
        aj, bj = _platt_one(y2[:, j], z2[:, j])
        a.append(aj)
        b.append(bj)
    return {"method": "platt", "a": a, "b": b, "n_records": int(len(y))}


def fit_temperature(y_true: Any, y_score: Any) -> dict[str, Any]:
    """One temperature T for multi-class probabilities (N, C) and class indices (N,), by NLL."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y_true).astype(np.int64)
    logp = np.log(np.clip(np.asarray(y_score, dtype=np.float64), 1e-12, 1.0))
    if logp.ndim != 2 or y.shape != (len(logp),):
        raise ValueError(
            f"temperature scaling needs (N,) classes and (N, C) probabilities; got {y.shape}, {logp.shape}"
        )

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean())

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-6})
    return {"method": "temperature", "temperature": float(np.exp(best.x)), "n_records": int(len(y))}


#: The fit of each calibrator a task may declare (:attr:`hubert_ecg.tasks.Task.calibrator`).
_FITS: dict[str, Callable[[Any, Any], dict[str, Any]]] = {"platt": fit_platt, "temperature": fit_temperature}


def fit_calibration(task: str, y_true: Any, y_score: Any) -> dict[str, Any]:
    """The task's calibrator (:attr:`hubert_ecg.tasks.Task.calibrator`): Platt for multi-label/binary,
    temperature for multi-class; regression has nothing to calibrate."""
    spec = find_task(task) if task else None
    fit = _FITS.get(spec.calibrator) if spec is not None and spec.calibrator else None
    if fit is None:
        raise ValueError(f"task {task!r} has no probabilities to calibrate")
    return fit(y_true, y_score)


def apply_calibration(calibration: dict[str, Any] | None, y_score: Any) -> np.ndarray:
    """Calibrated probabilities of the same shape as ``y_score`` (unchanged when ``calibration`` is None)."""
    p = np.asarray(y_score, dtype=np.float64)
    if not calibration:
        return p
    method = calibration.get("method")
    if method == "platt":
        a, b = np.asarray(calibration["a"], dtype=np.float64), np.asarray(calibration["b"], dtype=np.float64)
        p2 = p.reshape(len(p), -1)
        if p2.shape[1] != len(a):
            raise ValueError(f"the calibration has {len(a)} labels but the probabilities have {p2.shape[1]} columns")
        return _sigmoid(a * _logit(p2) + b).reshape(p.shape)
    if method == "temperature":
        z = np.log(np.clip(p, 1e-12, 1.0)) / float(calibration["temperature"])
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)
    raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(CALIBRATION_METHODS)}")


def calibrated_thresholds(calibration: dict[str, Any] | None, thresholds: Any) -> Any:
    """Thresholds on the calibrated scale that make the decisions ``thresholds`` make on the raw one.

    Decision thresholds are tuned on uncalibrated validation probabilities; applied unchanged to calibrated
    probabilities they would decide differently. Platt scaling with a > 0 is increasing per label, so a
    raw threshold t becomes calibrate(t) and every decision stays; temperature scaling keeps the argmax
    (multi-class has no thresholds). ``predict`` decides on the raw scale, so both agree.
    """
    if not calibration or thresholds is None or calibration.get("method") != "platt":
        return thresholds
    raw = np.asarray(thresholds, dtype=np.float64).reshape(1, -1)
    return apply_calibration(calibration, raw)[0].tolist()
