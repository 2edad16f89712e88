"""Why did the model say AF? Attribution of one output over lead x time, drawn on the ECG.

The model sees one flattened 5 s window: 12 leads end to end at 100 Hz, (12 * 500,) = 6000
samples. An attribution method assigns every one of those samples a share of the output, and
the flat index ``lead * T + t`` maps straight back to (lead, time):

* ``"integrated_gradients"`` (Sundararajan et al., 2017): the path integral of the gradient from
  a baseline to the input, times (input - baseline), by the trapezoid rule on about ``steps`` points,
  half of them log-spaced near the baseline (see :func:`_ig_grid`: the network is nearly
  scale-invariant, so that is where the output changes).
  The baseline is (practically) all zeros, which is how a *missing* lead reaches the model, so an
  attribution answers "how much did this lead-time stretch move the output compared to no ECG".
  Completeness: the attributions sum to ``f(x) - f(IG_START x)`` up to the integration error (the
  path starts at ``IG_START = 1e-5`` times the input; see :func:`_ig_grid` for why not at 0).
  A lead that is zero in the input gets exactly zero attribution.
* ``"gradient_x_input"``: gradient at the input times the input; one backward pass, noisier.

The explained output is the *logit* of the chosen label (or class): the probability saturates
near 0 and 1, where gradients vanish and tell nothing. A record longer than one window is cut into
non-overlapping windows (plus one flush with the end); the record's score is the mean over
windows, so each window's attribution counts 1/W, and a sample in two windows adds both shares.
:func:`explain_record` returns the attribution on the record's own time base (12, n) for
:func:`hubert_ecg.plots.ecg_figure` and a per-lead share of the total absolute attribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model import HubertECG
from .preprocess import LEAD_NAMES, N_LEADS, PreprocessSpec, cut_windows, preprocess_signal, window_starts
from .tasks import get_task

__all__ = ["METHODS", "Explanation", "attribute", "explain_record", "explain_file", "resolve_label"]

METHODS = ("integrated_gradients", "gradient_x_input")
#: Integrated gradients integrate from IG_START * x to x (see :func:`_ig_grid`).
IG_START = 1e-5


def resolve_label(model: HubertECG, label: str | int) -> int:
    """Output index of ``label``: a label/class name of the model, or an index."""
    names = list(model.info.label_names or [])
    if len(names) == 1:  # a single name may stand for all outputs (a multi-class model saved with its label)
        names = get_task(model.info.task).output_names(names, model.config.head.num_labels if model.config.head else 0)
    if isinstance(label, str) and label in names:
        return names.index(label)
    n_out = model.config.head.num_labels if model.config.head is not None else 0
    try:
        index = int(label)
    except (TypeError, ValueError):
        raise ValueError(
            f"unknown label {label!r}; the model's outputs are {', '.join(names[:20]) or f'0..{n_out - 1} (no names)'}"
        ) from None
    if not 0 <= index < n_out:
        raise ValueError(f"label index {index} is out of range for a model with {n_out} outputs")
    return index


def _ig_grid(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Integration points on [0, 1] and their trapezoid weights, dense near 0.

    The conv stem normalises its output, which makes the network nearly scale-invariant: f(a x) hardly
    changes for a > 0.3 and most of f(x) - f(0) happens at small scales (1e-4 < a < 0.1). A uniform
    grid misses that and breaks completeness by 10-20 %; half the points on a log scale do not.
    """
    # Midpoints of cells that are log-spaced up to 0.1 and uniform above. The path starts at IG_START x,
    # not at 0: the all-zero input is a discontinuity of the network (its normalisation maps exactly 0
    # and 1e-9 x to different outputs), and the gradient there is ~1/sqrt(eps).
    small = max(steps // 2, 1)
    edges = np.unique(np.r_[np.geomspace(IG_START, 0.1, small + 1), np.linspace(0.1, 1.0, max(steps - small, 1) + 1)])
    return 0.5 * (edges[1:] + edges[:-1]), np.diff(edges)


def attribute(
    model: HubertECG,
    windows: Any,
    target: int,
    *,
    method: str = "integrated_gradients",
    steps: int = 32,
    batch_size: int = 32,
    attention_mask: Any = None,
) -> np.ndarray:
    """Attribution of output ``target`` (a logit) for each window: (W, 6000) -> (W, 12, T) float64.

    Args:
        model: a model with a classification head (put in eval mode here; weights untouched).
        windows: (W, 12 * T) flattened model inputs (numpy or torch).
        target: output index (see :func:`resolve_label`).
        method: one of :data:`METHODS`.
        steps: integration points for integrated gradients (about 32 keeps the completeness gap to a
            few per cent; :func:`explain_record` reports it).
        attention_mask: optional (W, 12 * T) bool, as for the model's forward.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    if model.config.head is None:
        raise ValueError("this model has no classification head; attributions need a fine-tuned model")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    device = next(model.parameters()).device
    x = torch.as_tensor(
        np.asarray(windows, dtype=np.float32) if not torch.is_tensor(windows) else windows,
        dtype=torch.float32,
        device=device,
    )
    if x.dim() != 2 or x.shape[1] % N_LEADS:
        raise ValueError(f"expected flattened windows (W, 12 * T), got shape {tuple(x.shape)}")
    mask = None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask), device=device)
    was_training = model.training
    model.eval()
    out = np.empty((x.shape[0], x.shape[1]), dtype=np.float64)
    try:
        for w in range(x.shape[0]):
            xw = x[w : w + 1]
            mw = None if mask is None else mask[w : w + 1]
            alphas, quad = (np.ones(1), np.ones(1)) if method == "gradient_x_input" else _ig_grid(steps)
            total = torch.zeros_like(xw)
            for start in range(0, len(alphas), batch_size):
                a = torch.as_tensor(alphas[start : start + batch_size], dtype=torch.float32, device=device)
                q = torch.as_tensor(quad[start : start + batch_size], dtype=torch.float32, device=device)
                path = (a[:, None] * xw).detach().requires_grad_(True)
                m = None if mw is None else mw.expand(len(a), -1)
                logits = model(path, m).logits
                (grad,) = torch.autograd.grad(logits[:, target].sum(), path)
                total += (q[:, None] * grad).sum(dim=0, keepdim=True)
            out[w] = (total * xw).detach().double().cpu().numpy()[0]
    finally:
        model.train(was_training)
    return out.reshape(x.shape[0], N_LEADS, -1)


@dataclass
class Explanation:
    """Attribution of one output for one record.

    Attributes:
        label: the explained output's name (or index as text); ``target`` its index.
        probability: the model's record-level probability of that output (mean over windows).
        method: attribution method.
        model_attribution: (12, m) on the preprocessed record at the model rate (``model_fs``).
        attribution: (12, n) mapped to the raw record's time base (``fs``), for plotting on it.
        lead_share: (12,) share of the total absolute attribution per lead (sums to 1).
        completeness_gap: |sum of attributions - (f(x) - f(IG_START x))| / |f(x) - f(IG_START x)| averaged
            over windows, f the explained logit (integrated gradients only; NaN otherwise). Small = the
            integral was resolved well enough to trust.
    """

    label: str
    target: int
    probability: float
    method: str
    model_attribution: np.ndarray
    model_fs: float
    attribution: np.ndarray
    fs: float
    lead_share: np.ndarray
    completeness_gap: float

    def top_leads(self, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-self.lead_share)[:k]
        return [(LEAD_NAMES[i], float(self.lead_share[i])) for i in order]


@torch.no_grad()
def _logits(model: HubertECG, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return model(x, mask).logits.float()


def explain_record(
    model: HubertECG,
    signal: Any,
    fs: float,
    label: str | int,
    *,
    method: str = "integrated_gradients",
    steps: int = 32,
    spec: PreprocessSpec | None = None,
) -> Explanation:
    """Attribution of ``label`` for one raw record ``signal`` (12, n) at ``fs`` (see the module docstring)."""
    spec = spec or (
        PreprocessSpec.from_dict(model.info.preprocessing) if model.info.preprocessing else PreprocessSpec()
    )
    target = resolve_label(model, label)
    raw = np.asarray(signal, dtype=np.float64)
    prepared = preprocess_signal(raw, fs, spec)
    window = spec.window_samples
    starts = window_starts(prepared.shape[1], window, mode="sliding")
    x, mask = cut_windows(prepared, spec, starts)
    full = bool(mask.all())
    attr = attribute(model, x, target, method=method, steps=steps, attention_mask=None if full else mask)
    device = next(model.parameters()).device
    xt = torch.as_tensor(x, device=device)
    mt = None if full else torch.as_tensor(mask, device=device)
    was_training = model.training
    model.eval()  # the same deterministic network the attributions were computed on (no dropout)
    try:
        logits = _logits(model, xt, mt)
        start = _logits(model, IG_START * xt, mt) if method == "integrated_gradients" else None
    finally:
        model.train(was_training)
    probs = get_task(model.info.task).probabilities(logits).cpu().numpy()
    prob = float(np.mean(probs if probs.ndim == 1 else probs[:, target]))
    gap = float("nan")
    if start is not None:
        delta = (logits[:, target] - start[:, target]).cpu().numpy()
        sums = attr.sum(axis=(1, 2))
        ok = np.abs(delta) > 1e-8
        gap = float(np.mean(np.abs(sums[ok] - delta[ok]) / np.abs(delta[ok]))) if ok.any() else 0.0
    # Back onto the preprocessed record: each window counts 1/W (the record score is the window
    # mean), and a sample in two windows adds both shares, so completeness holds for the record.
    m = prepared.shape[1]
    model_attr = np.zeros((N_LEADS, m))
    for w, s in enumerate(starts):
        stop = min(m, s + window)
        model_attr[:, s:stop] += attr[w][:, : stop - s] / len(starts)
    # Raw sample j (time j / fs) takes the model sample that covers that time.
    idx = np.minimum((np.arange(raw.shape[1]) / fs * spec.target_hz).astype(np.int64), m - 1)
    raw_attr = model_attr[:, idx]
    share = np.abs(model_attr).sum(axis=1)
    share = share / share.sum() if share.sum() > 0 else share
    names = list(model.info.label_names or [])
    name = names[target] if not get_task(model.info.task).outputs_are_classes and target < len(names) else str(label)
    return Explanation(name, target, prob, method, model_attr, float(spec.target_hz), raw_attr, float(fs), share, gap)


def explain_file(
    model: HubertECG,
    path: str | Path,
    label: str | int,
    out_png: str | Path | None = None,
    *,
    method: str = "integrated_gradients",
    steps: int = 32,
    read_kwargs: dict[str, Any] | None = None,
) -> tuple[Explanation, Path | None]:
    """Read a record file, explain ``label`` and (with ``out_png``) draw the attribution on the clinical ECG."""
    from .io import read_record

    record = read_record(path, **(read_kwargs or {}))
    explanation = explain_record(model, record.signal, record.fs, label, method=method, steps=steps)
    written = None
    if out_png is not None:
        from .plots import ecg_figure, save_figure

        leads = ", ".join(f"{n} {s:.0%}" for n, s in explanation.top_leads(3))
        title = (
            f"{record.record_id}: {explanation.label} p={explanation.probability:.2f}; "
            f"{method.replace('_', ' ')} (red = relevance), top leads {leads}"
        )
        signal = record.signal.astype(np.float64)
        if record.units != "mV":
            title += f"; units {record.units}, grid not to scale"
        fig = ecg_figure(signal, record.fs, attribution=explanation.attribution, title=title)
        written = save_figure(fig, out_png)
    return explanation, written
