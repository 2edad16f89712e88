"""Evaluation report: Markdown plus a self-contained HTML page, with the metrics as JSON/CSV.

``write_report`` writes into ``out_dir``:

* ``report.md``   tables in Markdown, plots linked by relative path;
* ``report.html`` the same content with the plots embedded as base64 PNG (one file to share);
* ``metrics.json`` the metrics, the bootstrap intervals and ``extra``;
* ``metrics_per_label.csv`` one row per label plus the macro row.

The data note (what the numbers are and are not, e.g. "demo-scale model on synthetic data, not
a clinical result") is printed at the top of both reports so it cannot be missed.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubert_ecg.metrics import MetricsInputError, MetricsResult, to_jsonable
from hubert_ecg.tasks import get_task

__all__ = ["write_report", "write_compare_report", "ReportSection", "format_interval"]

_METRIC_LABELS = {
    "auroc": "AUROC",
    "auprc": "AUPRC (average precision)",
    "f1": "F1 @0.5",
    "precision": "PPV (precision) @0.5",
    "npv": "NPV @0.5",
    "brier": "Brier score",
    "ece": "ECE (10 bins)",
    "ece_top_label": "ECE top-label (10 bins)",
    "sensitivity": "Sensitivity @0.5",
    "specificity": "Specificity @0.5",
    "accuracy": "Accuracy @0.5",
    "f1_at_thr": "F1 @thresholds",
    "precision_at_thr": "PPV (precision) @thresholds",
    "npv_at_thr": "NPV @thresholds",
    "sensitivity_at_thr": "Sensitivity @thresholds",
    "specificity_at_thr": "Specificity @thresholds",
    "accuracy_at_thr": "Accuracy @thresholds",
    "balanced_accuracy": "Balanced accuracy",
    "mae": "MAE",
    "rmse": "RMSE",
    "r2": "R²",
    "pearson_r": "Pearson r",
}


def _display_name(metric: str, task: str) -> str:
    """The report name of ``metric``; a task may name some differently (multi-class: argmax, not a 0.5 cut)."""
    return get_task(task).metric_labels.get(metric, _METRIC_LABELS.get(metric, metric))


def _fmt(value: Any) -> str:
    if value is None:
        return "undefined"
    value = float(value)
    return "undefined" if not math.isfinite(value) else f"{value:.3f}"


def _fmt_interval(stats: Mapping[str, Any] | None) -> str:
    if not stats:
        return ""
    lower, upper = stats.get("lower"), stats.get("upper")
    if lower is None or upper is None or not (math.isfinite(lower) and math.isfinite(upper)):
        return "n/a"
    return f"[{lower:.3f}, {upper:.3f}]"


def format_interval(stats: Mapping[str, Any] | None, key: str = "point", signed: bool = False) -> str:
    """``0.812 [0.780, 0.840]`` from a stats dict (``point``/``difference``, ``lower``, ``upper``)."""
    if not stats:
        return ""
    value = stats.get(key)
    if value is None or not math.isfinite(float(value)):
        return "undefined"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    text = fmt.format(float(value))
    lower, upper = stats.get("lower"), stats.get("upper")
    if lower is not None and upper is not None and math.isfinite(lower) and math.isfinite(upper):
        text += f" [{fmt.format(lower)}, {fmt.format(upper)}]"
    return text


@dataclass
class ReportSection:
    """A titled table (with an optional intro and plots) appended to a report."""

    title: str
    header: list[str]
    rows: list[list[str]]
    intro: str = ""
    plots: dict[str, Path] = field(default_factory=dict)

    def markdown(self, out: Path) -> list[str]:
        md = [f"## {self.title}", ""]
        if self.intro:
            md += [self.intro, ""]
        if self.rows:
            md += [_md_table(self.header, self.rows), ""]
        for caption, plot_path in self.plots.items():
            rel = Path(os.path.relpath(Path(plot_path).resolve(), out.resolve())).as_posix()
            md += [f"### {caption}", "", f"![{caption}]({rel})", ""]
        return md

    def html(self) -> list[str]:
        parts = [f"<h2>{html.escape(self.title)}</h2>"]
        if self.intro:
            parts.append(f"<p>{html.escape(self.intro)}</p>")
        if self.rows:
            parts.append(_html_table(self.header, self.rows))
        for caption, plot_path in self.plots.items():
            encoded = base64.b64encode(Path(plot_path).read_bytes()).decode("ascii")
            parts.append(
                f"<h3>{html.escape(caption)}</h3>"
                f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
            )
        return parts


def _summary_rows(result: MetricsResult, ci: Mapping[str, Any] | None) -> list[list[str]]:
    rows = []
    for group, values in (("overall", result.overall), ("macro", result.macro)):
        ci_group = (ci or {}).get(group, {})
        for metric, value in values.items():
            stats = ci_group.get(metric)
            name = _display_name(metric, result.task)
            label = name if group == "overall" else f"macro {name}"
            used = str(stats["n_used"]) if stats else ""
            rows.append([label, _fmt(value), _fmt_interval(stats), used])
    return rows


def _per_label_table(result: MetricsResult, ci: Mapping[str, Any] | None) -> tuple[list[str], list[list[str]]]:
    metrics = result.metric_names
    header = ["label"]
    if result.n_positive is not None:
        header.append("n positive")
    if result.thresholds is not None:
        header.append("threshold")
    header += [_display_name(m, result.task) for m in metrics]
    ci_labels = (ci or {}).get("per_label", {})
    rows = []
    for i, name in enumerate(result.label_names):
        row = [name + (" (undefined)" if name in result.undefined_labels else "")]
        if result.n_positive is not None:
            row.append(str(int(result.n_positive[i])))
        if result.thresholds is not None:
            row.append(f"{float(result.thresholds[i]):.3f}")
        for metric in metrics:
            cell = _fmt(result.per_label[metric][i])
            interval = _fmt_interval(ci_labels.get(name, {}).get(metric))
            if interval and interval != "n/a" and cell != "undefined":
                cell += f" {interval}"
            row.append(cell)
        rows.append(row)
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _extra_rows(extra: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for key, value in extra.items():
        text = value if isinstance(value, str) else json.dumps(to_jsonable(value))
        rows.append([str(key), str(text)])
    return rows


def _facts(result: MetricsResult, ci: Mapping[str, Any] | None) -> list[str]:
    facts = [
        f"Task: {result.task}",
        f"Records evaluated: {result.n_records}",
        f"Labels: {len(result.label_names)}",
    ]
    if result.undefined_labels:
        facts.append(
            f"Labels left out of macro averages (no positive or no negative record): {result.n_undefined} "
            f"({', '.join(result.undefined_labels)})"
        )
    else:
        facts.append("Labels left out of macro averages: 0")
    if ci:
        method = {"bca": "BCa (bias-corrected and accelerated)"}.get(ci["method"], ci["method"])
        facts.append(
            f"Confidence intervals: {method} bootstrap over records, {int(round(100 * ci['confidence']))} %, "
            f"{ci['n_resamples']} resamples, seed {ci['seed']}, stratified: {'yes' if ci['stratify'] else 'no'}"
        )
    else:
        facts.append("Confidence intervals: not computed")
    return facts


_STYLE = (
    "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:0.3em 0.6em;text-align:left}th{background:#f2f2f2}"
    ".note{background:#fff4d6;border-left:6px solid #e0a800;padding:0.8em 1em;font-size:1.1em}"
    "img{max-width:100%;border:1px solid #ddd}</style></head><body>"
)


def _markdown_page(title: str, data_note: str, facts: list[str], body: list[str], extra: Mapping[str, Any]) -> str:
    """Heading, the data note, the facts, ``body`` lines and the details table, as Markdown."""
    md = [f"# {title}", "", f"> **Note:** {data_note.strip()}", ""] + [f"- {fact}" for fact in facts] + [""]
    md += body
    if extra:
        md += ["## Details", "", _md_table(["item", "value"], _extra_rows(extra)), ""]
    return "\n".join(md)


def _html_page(title: str, data_note: str, facts: list[str], body: list[str], extra: Mapping[str, Any]) -> str:
    """The same page as :func:`_markdown_page` in self-contained HTML (``body`` is HTML parts)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        _STYLE,
        f"<h1>{esc(title)}</h1>",
        f'<div class="note"><strong>Note:</strong> {esc(data_note.strip())}</div>',
        "<ul>" + "".join(f"<li>{esc(fact)}</li>" for fact in facts) + "</ul>",
    ]
    parts += body
    if extra:
        parts += ["<h2>Details</h2>", _html_table(["item", "value"], _extra_rows(extra))]
    parts.append("</body></html>")
    return "\n".join(parts)


def _check_note(data_note: str, what: str) -> None:
    if not data_note or not data_note.strip():
        raise MetricsInputError(f"data_note is empty: say what data and {what} the numbers describe")


def _report_sections(
    result: MetricsResult, ci: Mapping[str, Any] | None, plots: Mapping[str, str | Path]
) -> list[ReportSection]:
    """The standard parts of an evaluation report: summary, plots, per-label table, confusion matrix."""
    summary_header = ["metric", "value", f"{int(round(100 * ci['confidence']))} % CI" if ci else "CI", "resamples used"]
    out = [ReportSection("Summary", summary_header, _summary_rows(result, ci))]
    if plots:
        out.append(ReportSection("Plots", [], [], plots={k: Path(v) for k, v in plots.items()}))
    out.append(ReportSection("Per label", *_per_label_table(result, ci)))
    if result.confusion_matrix is not None:
        cm_header = ["true \\ predicted"] + list(result.label_names)
        cm_rows = [
            [name] + [str(int(v)) for v in row] for name, row in zip(result.label_names, result.confusion_matrix)
        ]
        out.append(ReportSection("Confusion matrix", cm_header, cm_rows))
    return out


def _report_markdown(out: Path, result: MetricsResult, parts: list[ReportSection]) -> list[str]:
    md = parts[0].markdown(out)
    if get_task(result.task).probabilistic:
        md += [
            "Macro values average only the labels listed as defined; "
            "AUROC/AUPRC of a label without positives is undefined, not 0.",
            "",
        ]
    for section in parts[1:]:
        md += section.markdown(out)
    return md


def _write_metrics_files(
    out: Path,
    title: str,
    data_note: str,
    result: MetricsResult,
    ci: Mapping[str, Any] | None,
    extra: Mapping[str, Any],
    details: Mapping[str, Any] | None,
) -> None:
    """metrics.json (metrics, intervals, extra, details) and metrics_per_label.csv."""
    payload = {
        "title": title,
        "data_note": data_note.strip(),
        "metrics": result.to_dict(),
        "confidence_intervals": to_jsonable(ci) if ci else None,
        "extra": to_jsonable(extra),
    }
    if details:
        payload["details"] = to_jsonable(details)
    (out / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    result.write_csv(out / "metrics_per_label.csv")


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    metrics_result: MetricsResult,
    ci: Mapping[str, Any] | None = None,
    plots: Mapping[str, str | Path] | None = None,
    data_note: str,
    extra: Mapping[str, Any] | None = None,
    sections: Sequence[ReportSection] | None = None,
    details: Mapping[str, Any] | None = None,
) -> Path:
    """Write report.md, report.html, metrics.json and metrics_per_label.csv into ``out_dir``.

    Args:
        out_dir: folder, created if needed.
        title: report heading.
        metrics_result: output of :func:`hubert_ecg.metrics.compute_metrics`.
        ci: output of :func:`hubert_ecg.metrics.bootstrap_ci` for the same data, or None.
        plots: caption -> PNG path; embedded in the HTML, linked relatively in the Markdown.
        data_note: what the numbers describe; shown prominently at the top.
        extra: further facts (checkpoint, split, command line, ...) listed in a table.
        sections: further titled tables (calibration, subgroups, lead subsets, ...) placed after
            the per-label table, each optionally with an intro paragraph and plots of its own.
        details: further machine-readable results, stored under ``details`` in metrics.json.

    Returns:
        Path of report.html (report.md and the metrics files lie next to it).
    """
    _check_note(data_note, "model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = dict(plots or {})
    extra = dict(extra or {})
    for caption, plot_path in plots.items():
        if not Path(plot_path).is_file():
            raise MetricsInputError(f"plot '{caption}' not found: {plot_path}")
    facts = _facts(metrics_result, ci)
    parts = _report_sections(metrics_result, ci, plots) + list(sections or [])
    md = _report_markdown(out, metrics_result, parts)
    (out / "report.md").write_text(_markdown_page(title, data_note, facts, md, extra))
    body = [line for section in parts for line in section.html()]
    html_path = out / "report.html"
    html_path.write_text(_html_page(title, data_note, facts, body, extra), encoding="utf-8")
    _write_metrics_files(out, title, data_note, metrics_result, ci, extra, details)
    return html_path


def _compare_facts(res_a: MetricsResult, paired: Mapping[str, Any], names: tuple[str, str]) -> list[str]:
    method = {"bca": "BCa"}.get(paired["method"], paired["method"])
    facts = [
        f"A = {names[0]}",
        f"B = {names[1]}",
        f"Task: {res_a.task}; records (the same for both): {res_a.n_records}; labels: {len(res_a.label_names)}",
        f"Intervals: {method} bootstrap, {int(round(100 * paired['confidence']))} %, {paired['n_resamples']} "
        f"paired resamples (both models scored on the same resampled records), seed {paired['seed']}, "
        f"stratified: {'yes' if paired['stratify'] else 'no'}; p = two-sided bootstrap p-value of B - A",
    ]
    if res_a.undefined_labels:
        facts.append(f"Labels left out of macro averages: {', '.join(res_a.undefined_labels)}")
    return facts


def _compare_summary(comparison: Mapping[str, Any], names: tuple[str, str]) -> ReportSection:
    """Both models' overall and macro metrics with CIs, and their paired differences."""
    task, ci_a, ci_b, paired = comparison["a"].task, comparison["ci_a"], comparison["ci_b"], comparison["paired"]
    rows = []
    for group in ("overall", "macro"):
        for metric, diff in paired[group].items():
            name = _display_name(metric, task)
            p_value = diff["p_value"]
            rows.append(
                [
                    name if group == "overall" else f"macro {name}",
                    format_interval(ci_a[group].get(metric)),
                    format_interval(ci_b[group].get(metric)),
                    format_interval(diff, "difference", signed=True),
                    "" if p_value is None or not math.isfinite(p_value) else f"{p_value:.3g}",
                ]
            )
    header = ["metric", f"A: {names[0]}", f"B: {names[1]}", "B - A", "p (bootstrap)"]
    return ReportSection("Summary: both models and their paired difference", header, rows)


def _delong_section(delong: Mapping[str, Any]) -> ReportSection | None:
    rows = [
        [
            name,
            f"{d['auroc_a']:.3f}",
            f"{d['auroc_b']:.3f}",
            f"{d['difference']:+.3f} [{d['lower']:+.3f}, {d['upper']:+.3f}]",
            f"{d['z']:.2f}",
            f"{d['p_value']:.3g}",
        ]
        for name, d in delong.items()
    ]
    if not rows:
        return None
    return ReportSection(
        "DeLong's test for AUROC",
        ["label", "AUROC A", "AUROC B", "B - A [95 % CI]", "z", "p (DeLong)"],
        rows,
        intro="DeLong, DeLong & Clarke-Pearson (1988) for two correlated ROC curves on the same records "
        "(fast midrank algorithm of Sun & Xu 2014); normal-approximation interval and p-value.",
    )


def _compare_per_label(comparison: Mapping[str, Any], plots: Mapping[str, str | Path] | None) -> ReportSection:
    """The task's main metric per label for A and B, and the paired difference."""
    res_a, ci_a, ci_b, paired = comparison["a"], comparison["ci_a"], comparison["ci_b"], comparison["paired"]
    main_metric = get_task(res_a.task).main_metric
    rows = [
        [
            name,
            format_interval(ci_a["per_label"][name].get(main_metric)),
            format_interval(ci_b["per_label"][name].get(main_metric)),
            format_interval(paired["per_label"][name].get(main_metric), "difference", signed=True),
        ]
        for name in res_a.label_names
    ]
    display = _display_name(main_metric, res_a.task)
    return ReportSection(
        f"Per label ({display})",
        ["label", f"{display} A", "B", "B - A (paired bootstrap)"],
        rows,
        plots={k: Path(v) for k, v in (plots or {}).items()},
    )


def write_compare_report(
    out_dir: str | Path,
    *,
    title: str,
    comparison: Mapping[str, Any],
    names: tuple[str, str],
    data_note: str,
    plots: Mapping[str, str | Path] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """One page with two models side by side: each model's metrics with CIs, the paired difference
    ``B - A`` with its CI and bootstrap p-value, and DeLong's test per label.

    ``comparison`` is the output of :func:`hubert_ecg.compare.compare_scores`. Writes
    ``compare.html``, ``compare.md`` and ``comparison.json`` into ``out_dir``; returns the HTML path.
    """
    _check_note(data_note, "models")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = _compare_facts(comparison["a"], comparison["paired"], names)
    delong = _delong_section(comparison["delong"])
    sections = [_compare_summary(comparison, names)] + ([delong] if delong else [])
    sections.append(_compare_per_label(comparison, plots))
    md = [line for section in sections for line in section.markdown(out)]
    (out / "compare.md").write_text(_markdown_page(title, data_note, facts, md, extra or {}))
    body = [line for section in sections for line in section.html()]
    html_path = out / "compare.html"
    html_path.write_text(_html_page(title, data_note, facts, body, extra or {}), encoding="utf-8")
    payload = {
        "title": title,
        "data_note": data_note.strip(),
        "a": names[0],
        "b": names[1],
        "metrics_a": comparison["a"].to_dict(),
        "metrics_b": comparison["b"].to_dict(),
        "ci_a": comparison["ci_a"],
        "ci_b": comparison["ci_b"],
        "paired_difference_b_minus_a": comparison["paired"],
        "delong": comparison["delong"],
        "extra": dict(extra or {}),
    }
    (out / "comparison.json").write_text(json.dumps(to_jsonable(payload), indent=2) + "\n")
    return html_path
