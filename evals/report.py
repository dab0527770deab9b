"""A self-contained HTML report over the nightly run records of one suite.

One file, nothing fetched when it is opened: inline CSS, plots embedded as base64 PNG data URIs. Every
string that comes from a run record goes through `html.escape` (query texts are arbitrary user data).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on a nightly runner

import matplotlib.pyplot as plt  # after the backend is chosen
from matplotlib.figure import Figure

from evals.gate import leak_count

_LATENCY_STAGES = ("embed", "search", "total")
_LATENCY_STATS = ("p50", "p95", "p99", "mean", "n")
_PER_USER_COLUMNS = ("ndcg@10", "recall@10", "leaks", "fidelity@10", "queries")
_TOP_RETRIEVED = 10
_MAX_TICK_LABELS = 15

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.leaks { font-size: 3.5em; font-weight: bold; } .ok { color: #1a7f37; } .bad { color: #c62828; }
.muted { color: #777; } code { font-size: 0.9em; } img { max-width: 100%; }
.rel { font-weight: bold; color: #1a7f37; }
"""


def write_report(
    runs: Sequence[Mapping[str, Any]],
    out_path: Path,
    *,
    baseline: Mapping[str, Any] | None = None,
    worst: int = 10,
) -> Path:
    """Write the HTML report for `runs` (one suite, oldest first; the last is the latest) to `out_path`.

    `baseline` is an extra run record to compare the latest against (e.g. a release); `worst` is how many of
    the latest run's worst queries by nDCG@10 to list. Returns `out_path`.
    """
    if not runs:
        raise ValueError("write_report needs at least one run record")
    latest = runs[-1]
    previous = runs[-2] if len(runs) > 1 else None
    sections = [
        _header(latest),
        _leak_section(latest),
        _metrics_section(latest, previous, baseline),
        _per_user_section(latest),
        _latency_section(latest, previous),
        _plots_section(runs, latest),
        _worst_section(latest, worst),
        _llm_section(latest),
    ]
    title = f"Tessera eval — {latest.get('suite', '?')} — {latest.get('run_id', '?')}"
    document = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(document, encoding="utf-8")
    return out_path


# --- sections -------------------------------------------------------------------------------------------


def _header(latest: Mapping[str, Any]) -> str:
    machine = latest.get("machine") or {}
    index_size = latest.get("index_size") or {}
    acl = latest.get("acl") or {}
    rows = [
        ("run", latest.get("run_id")),
        ("dataset", latest.get("dataset_path")),
        ("started / finished", f"{latest.get('started_at', '?')} / {latest.get('finished_at', '?')}"),
        ("git commit", latest.get("git_commit")),
        ("machine", _inline(machine)),
        ("index size", _inline(index_size)),
        ("ACL", _inline({k: v for k, v in acl.items() if k != "users"})),
    ]
    settings = latest.get("settings") or {}
    return (
        f"<h1>Evaluation report: {_esc(latest.get('suite', '?'))}</h1>\n"
        + _table(("", "value"), [(f"<b>{_esc(k)}</b>", _code(v)) for k, v in rows])
        + "\n<h3>Settings</h3>\n"
        + _table(("setting", "value"), [(_esc(k), _code(v)) for k, v in sorted(settings.items())])
    )


def _leak_section(latest: Mapping[str, Any]) -> str:
    count = leak_count(latest)
    css = "ok" if count == 0 else "bad"
    shown = "unknown" if count is None else str(count)
    leaked = [q for q in latest.get("queries") or [] if q.get("leaked")]
    rows = [(_esc(q.get("query_id")), _esc(q.get("user")), _esc(", ".join(map(str, q["leaked"])))) for q in leaked]
    detail = _table(("query", "user", "leaked passages"), rows) if rows else ""
    return (
        "<h2>ACL leaks</h2>\n"
        f"<div class='leaks {css}' id='leak-count'>{_esc(shown)}</div>\n"
        "<p class='muted'>passages returned to a user who may not read them (latest run; must be 0)</p>\n" + detail
    )


def _metrics_section(
    latest: Mapping[str, Any], previous: Mapping[str, Any] | None, baseline: Mapping[str, Any] | None
) -> str:
    columns = [("latest", latest)]
    if previous is not None:
        columns.append(("previous", previous))
    if baseline is not None:
        columns.append(("baseline", baseline))
    names = _ordered_keys(run.get("metrics") or {} for _, run in columns)
    headers = ["metric", f"latest<br><span class='muted'>{_esc(latest.get('run_id'))}</span>"]
    for label, run in columns[1:]:
        headers += [f"{label}<br><span class='muted'>{_esc(run.get('run_id'))}</span>", f"Δ vs {label}"]
    rows = []
    for name in names:
        value = _metric(latest, name)
        row = [_esc(name), _num_cell(value)]
        for _, run in columns[1:]:
            other = _metric(run, name)
            row += [_num_cell(other), _delta_cell(value, other)]
        rows.append(row)
    return "<h2>Metrics</h2>\n" + _table(headers, rows)


def _per_user_section(latest: Mapping[str, Any]) -> str:
    per_user = latest.get("per_user") or {}
    if not per_user:
        return "<h2>Per user</h2>\n<p class='muted'>no per-user results</p>"
    groups = (latest.get("acl") or {}).get("users") or {}
    rows = []
    for user, stats in sorted(per_user.items()):
        row = [_esc(user), _esc(", ".join(map(str, groups.get(user, []))))]
        for column in _PER_USER_COLUMNS:
            value = stats.get(column)
            if column == "leaks":
                row.append(_leak_cell(value))
            else:
                row.append(_num_cell(value, digits=0 if column == "queries" else 3))
        rows.append(row)
    return "<h2>Per user</h2>\n" + _table(("user", "groups", *_PER_USER_COLUMNS), rows)


def _latency_section(latest: Mapping[str, Any], previous: Mapping[str, Any] | None) -> str:
    latency = latest.get("latency_ms") or {}
    old = (previous or {}).get("latency_ms") or {}
    headers = ["stage", *(f"{s} (ms)" if s != "n" else s for s in _LATENCY_STATS)]
    if previous is not None:
        headers += ["previous p95", "p95 change"]
    rows = []
    for stage in _LATENCY_STAGES:
        stats = latency.get(stage) or {}
        row = [_esc(stage), *(_num_cell(stats.get(s), digits=0 if s == "n" else 2) for s in _LATENCY_STATS)]
        if previous is not None:
            old_p95 = (old.get(stage) or {}).get("p95")
            row += [_num_cell(old_p95, digits=2), _ratio_cell(stats.get("p95"), old_p95)]
        rows.append(row)
    return "<h2>Retrieval time</h2>\n" + _table(headers, rows)


def _plots_section(runs: Sequence[Mapping[str, Any]], latest: Mapping[str, Any]) -> str:
    parts = ["<h2>Plots</h2>", _img(_trend_figure(runs), "metrics and p95 latency over runs")]
    histogram = _latency_histogram(latest)
    parts.append(
        _img(histogram, "latency distribution of the latest run")
        if histogram is not None
        else "<p class='muted'>no per-query timings in the latest run</p>"
    )
    return "\n".join(parts)


def _worst_section(latest: Mapping[str, Any], worst: int) -> str:
    queries = worst_queries(latest.get("queries") or [], worst)
    if not queries:
        return "<h2>Worst queries</h2>\n<p class='muted'>no scored queries</p>"
    rows = [_worst_row(query) for query in queries]
    headers = ("query", "user", "nDCG@10", "recall@10", f"top {_TOP_RETRIEVED} retrieved", "relevant (grade)")
    return f"<h2>Worst {len(queries)} queries by nDCG@10</h2>\n" + _table(headers, rows)


def _llm_section(latest: Mapping[str, Any]) -> str:
    llm = latest.get("llm_metrics") or {"status": "missing", "reason": "no llm_metrics in the run record"}
    status = str(llm.get("status", "?"))
    head = f"<h2>LLM-judged metrics</h2>\n<p>status: <b>{_esc(status)}</b>"
    if llm.get("reason"):
        head += f" — {_esc(llm['reason'])}"
    head += "</p>"
    values = [(_esc(k), _num_cell(v)) for k, v in llm.items() if k not in ("status", "reason")]
    return head + ("\n" + _table(("metric", "value"), values) if values else "")


# --- worst queries --------------------------------------------------------------------------------------


def worst_queries(queries: Iterable[Mapping[str, Any]], count: int) -> list[Mapping[str, Any]]:
    """The `count` queries with the lowest nDCG@10 (ties: lower recall@10 first); unscored queries are left out."""
    scored = [q for q in queries if _finite(q.get("ndcg@10")) is not None]

    def key(query: Mapping[str, Any]) -> tuple[float, float]:
        recall = _finite(query.get("recall@10"))
        return (float(query["ndcg@10"]), math.inf if recall is None else recall)

    return sorted(scored, key=key)[: max(count, 0)]


def _worst_row(query: Mapping[str, Any]) -> list[str]:
    relevant = query.get("relevant") or {}
    retrieved = [str(pid) for pid in (query.get("retrieved") or [])[:_TOP_RETRIEVED]]
    shown = ", ".join(f"<span class='rel'>{_esc(p)}</span>" if p in relevant else _esc(p) for p in retrieved)
    grades = sorted(relevant.items(), key=lambda item: (-_grade(item[1]), str(item[0])))
    text = f"<b>{_esc(query.get('query_id'))}</b> {_esc(query.get('text'))}"
    return [
        text,
        _esc(query.get("user")),
        _num_cell(query.get("ndcg@10")),
        _num_cell(query.get("recall@10")),
        f"<code>{shown}</code>",
        "<code>" + ", ".join(f"{_esc(pid)} ({_esc(grade)})" for pid, grade in grades) + "</code>",
    ]


def _grade(value: Any) -> float:
    number = _finite(value)
    return 0.0 if number is None else number


# --- plots ----------------------------------------------------------------------------------------------


def _trend_figure(runs: Sequence[Mapping[str, Any]]) -> Figure:
    names = _ordered_keys(run.get("metrics") or {} for run in runs)
    x = list(range(len(runs)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True, height_ratios=(2, 1))
    for name in names:
        top.plot(x, [_nan(_metric(run, name)) for run in runs], marker="o", label=name)
    top.set_ylabel("score")
    top.set_title("Metrics over runs")
    top.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top.grid(alpha=0.3)
    for stat in ("p50", "p95"):
        values = [_nan(((run.get("latency_ms") or {}).get("total") or {}).get(stat)) for run in runs]
        bottom.plot(x, values, marker="o", label=f"total {stat}")
    bottom.set_ylabel("ms")
    bottom.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    bottom.grid(alpha=0.3)
    step = max(1, math.ceil(len(runs) / _MAX_TICK_LABELS))
    ticks = sorted({*x[::step], x[-1]})  # thinned, but always the latest run
    bottom.set_xticks(ticks, [str(runs[i].get("run_id", i)) for i in ticks])
    bottom.tick_params(axis="x", labelrotation=30, labelsize="small")
    fig.tight_layout()
    return fig


def _latency_histogram(latest: Mapping[str, Any]) -> Figure | None:
    queries = latest.get("queries") or []
    series = {
        stage: [v for v in (_finite(q.get(f"{stage}_ms")) for q in queries) if v is not None]
        for stage in _LATENCY_STAGES
    }
    if not any(series.values()):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, stage in zip(axes, ("total", "embed", "search"), strict=True):
        values = series[stage]
        if values:
            ax.hist(values, bins=min(30, max(5, len(values) // 3)), color="#4a7ab5")
        p95 = _finite(((latest.get("latency_ms") or {}).get(stage) or {}).get("p95"))
        if p95 is not None:
            ax.axvline(p95, color="#c62828", linestyle="--", label=f"p95 {p95:.1f} ms")
            ax.legend(fontsize="small")
        ax.set_title(f"{stage} per query (n={len(values)})")
        ax.set_xlabel("ms")
    axes[0].set_ylabel("queries")
    fig.tight_layout()
    return fig


def _img(fig: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<p><img alt='{_esc(alt)}' src='data:image/png;base64,{data}'></p>"


# --- small helpers --------------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _code(value: Any) -> str:
    return f"<code>{_esc(value)}</code>" if value not in (None, "") else "<span class='muted'>—</span>"


def _inline(mapping: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in mapping.items())


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Headers and cells are HTML already (escaped by the caller)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def _ordered_keys(mappings: Iterable[Mapping[str, Any]]) -> list[str]:
    """Keys in first-seen order across the mappings, without duplicates."""
    return list(dict.fromkeys(key for mapping in mappings for key in mapping))


def _metric(run: Mapping[str, Any], name: str) -> float | None:
    return _finite((run.get("metrics") or {}).get(name))


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _nan(value: Any) -> float:
    number = _finite(value)
    return math.nan if number is None else number


def _num_cell(value: Any, digits: int = 3) -> str:
    number = _finite(value)
    if number is None:
        return "<td class='num muted'>—</td>" if value is None else f"<td>{_esc(value)}</td>"
    return f"<td class='num'>{number:.{digits}f}</td>"


def _delta_cell(value: float | None, other: float | None) -> str:
    if value is None or other is None:
        return "<td class='num muted'>—</td>"
    delta = value - other
    css = "ok" if delta > 1e-9 else "bad" if delta < -1e-9 else "muted"
    return f"<td class='num {css}'>{delta:+.3f}</td>"


def _ratio_cell(value: Any, other: Any) -> str:
    new, old = _finite(value), _finite(other)
    if new is None or old is None or old <= 0:
        return "<td class='num muted'>—</td>"
    change = (new - old) / old
    css = "bad" if change > 0.1 else "ok" if change < -0.1 else "muted"
    return f"<td class='num {css}'>{change:+.0%}</td>"


def _leak_cell(value: Any) -> str:
    number = _finite(value)
    if number is None:
        return "<td class='num muted'>—</td>"
    return f"<td class='num {'bad' if number > 0 else 'ok'}'><b>{int(number)}</b></td>"
