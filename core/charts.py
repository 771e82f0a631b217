"""Plotly figures. Pure functions from DataFrames to figures, so pages stay short and the charts
can be tested without a browser."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .analysis import DEFAULT_CUTOFFS, PHASE_COLORS, PHASES, pct_to_ratio
from .forecast import backtest_text
from .labels import short_names

PALETTE = ["#1565c0", "#d84315", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457", "#5d4037", "#f9a825"]


# Numbers claimed by Martz 2025 (scale-dependent forgetting), one style per domain so two claimed
# curves never look alike.
CLAIMED_SOURCE = "Martz 2025"
CLAIMED_STYLES = {
    "legal": dict(color="#424242", dash="dash", symbol="x"),
    "financial": dict(color="#8d6e63", dash="dot", symbol="triangle-up"),
    "medical": dict(color="#546e7a", dash="dashdot", symbol="square"),
}
SMOKE_FAIL_COLOR = "#b71c1c"


def _label_rows(xs: list[float], texts: list[str], span_decades: float) -> list[int]:
    """Row (0 = lowest) for each label placed at log10 x, so labels closer than their own width
    (about 6.5 px per character on a ~900 px wide plot) go to different rows."""
    per_char = 6.5 * max(span_decades, 0.3) / 900
    placed: list[tuple[float, float, int]] = []  # (left, right, row)
    rows = []
    for x, t in zip(xs, texts):
        half = len(t) * per_char / 2
        row = 0
        while any(r == row and x - half < b and x + half > a for a, b, r in placed):
            row += 1
        placed.append((x - half, x + half, row))
        rows.append(row)
    return rows


def pct_label(p: float) -> str:
    return f"{p:+,.0f}%" if abs(p) >= 10 else f"{p:+.1f}%"


MAX_SIZE_TICKS = 8


def log_x_ticks(scales) -> dict:
    """Ticks at the measured sizes themselves when there are a few (at most `MAX_SIZE_TICKS`: a
    sweep of 4, 8, 16, 32, 64 reads off its own sizes), else 1-2-5 per decade across the data;
    labelled with thousands separators (plotly's default log ticks print bare minor digits such
    as '2 3 4')."""
    vals = [float(v) for v in scales if v and v > 0]
    if not vals:
        return {}
    sizes = sorted(set(vals))
    if len(sizes) <= MAX_SIZE_TICKS:
        return dict(tickvals=sizes, ticktext=[f"{t:,.0f}" for t in sizes])
    lo, hi = min(vals), max(vals)
    ticks = [
        m * 10**e
        for e in range(int(math.floor(math.log10(lo))), int(math.ceil(math.log10(hi))) + 1)
        for m in (1, 2, 5)
        if lo / 1.5 <= m * 10**e <= hi * 1.5
    ]
    return dict(tickvals=ticks, ticktext=[f"{t:,.0f}" for t in ticks])


def _ratio_ticks(lo_ratio: float, hi_ratio: float) -> tuple[list[float], list[str]]:
    cands = [
        -90,
        -50,
        -20,
        0,
        10,
        20,
        50,
        100,
        200,
        500,
        1000,
        2000,
        5000,
        10000,
        20000,
        50000,
        100000,
    ]
    # Outward from 0 %, keep a tick only if it is far enough from the last one kept: on a long
    # axis 0 %, +10 % and +20 % would otherwise print on top of each other.
    gap = _min_gap(lo_ratio, hi_ratio)
    shown = [c for c in cands if lo_ratio * 0.9 <= 1 + c / 100 <= hi_ratio * 1.1]
    vals = [c for c in shown if c == 0]
    for side in ([c for c in shown if c > 0], [c for c in reversed(shown) if c < 0]):
        last = 0.0
        for c in side:
            y = math.log10(1 + c / 100)
            if abs(y - last) >= gap:
                vals.append(c)
                last = y
    vals.sort()
    return [1 + c / 100 for c in vals], [pct_label(c) if c else "0%" for c in vals]


def _ratio_axis(lo_ratio: float, hi_ratio: float) -> dict:
    """A log y axis in perplexity ratio labelled in %: the ticks of `_ratio_ticks`, and a range
    widened to the outermost tick kept (the axis then ends on a labelled value: a curve reaching
    +348 % shows a +500 % tick above it, not +200 % as its top label)."""
    tv, tt = _ratio_ticks(lo_ratio, hi_ratio)
    lo, hi = min([lo_ratio, *tv]) / 1.02, max([hi_ratio, *tv]) * 1.02
    return dict(type="log", tickvals=tv, ticktext=tt, range=[math.log10(lo), math.log10(hi)])


class _Overlay:
    """The shapes and annotations of the Threshold chart's upper panel (row 1, col 1), added to
    the figure in one step at the end. Plotly's `add_hline` / `add_vline` / `add_hrect` /
    `add_annotation` re-validate every shape and annotation already in the layout on each call,
    which made the chart's dozen lines and labels cost more than its curves. These are the
    objects those calls add, in their order; like them, a line or band is left out when the panel
    holds no trace yet (plotly's `exclude_empty_subplots`)."""

    def __init__(self, fig: go.Figure) -> None:
        self.fig = fig
        self.shapes: list[dict] = []
        self.annotations: list[dict] = []

    def _panel_has_data(self) -> bool:
        return any(t.xaxis in (None, "x") and t.yaxis in (None, "y") for t in self.fig.data)

    def hline(self, y: float, **kw) -> None:
        if self._panel_has_data():
            self.shapes.append(
                dict(type="line", x0=0, x1=1, xref="x domain", y0=y, y1=y, yref="y", **kw)
            )

    def vline(self, x: float, **kw) -> None:
        if self._panel_has_data():
            self.shapes.append(
                dict(type="line", x0=x, x1=x, xref="x", y0=0, y1=1, yref="y domain", **kw)
            )

    def hrect(self, y0: float, y1: float, **kw) -> None:
        if self._panel_has_data():
            self.shapes.append(
                dict(type="rect", x0=0, x1=1, xref="x domain", y0=y0, y1=y1, yref="y", **kw)
            )

    def annotation(self, **kw) -> None:
        self.annotations.append({"xref": "x", "yref": "y", **kw})

    def apply(self) -> None:
        if self.shapes:
            self.fig.update_layout(shapes=[*self.fig.layout.shapes, *self.shapes])
        if self.annotations:
            self.fig.update_layout(annotations=[*self.fig.layout.annotations, *self.annotations])


def _min_gap(lo_ratio: float, hi_ratio: float) -> float:
    """A sixteenth of the ratio axis's height in log10 units (about a label's height on the
    Threshold chart): closer labels overlap."""
    return (math.log10(hi_ratio) - math.log10(lo_ratio)) / 16


def threshold_figure(
    curves: pd.DataFrame,
    labels: dict[str, str],
    cutoffs=DEFAULT_CUTOFFS,
    threshold: dict[str, float | None] | None = None,
    level: float = 10.0,
    domain_curves: pd.DataFrame | None = None,
    paper: pd.DataFrame | None = None,
    guidance: tuple[float, ...] = (),
    fits: dict | None = None,
    unfinished: pd.DataFrame | None = None,
    smoke_failed: pd.DataFrame | None = None,
    forecasts: dict | None = None,
) -> go.Figure:
    """Degradation vs dataset size on log-log axes (the y axis is the perplexity ratio, labelled
    in %, so -20 % and +20,000 % are both readable), one line per run with a band over seeds,
    phase bands, the threshold and the curves claimed by Martz 2025 (one style per domain); domain
    improvement in a second panel. `unfinished` points (stopped by the in-training smoke test,
    diverged, failed: columns run_id, scale, seed, status, error) are left out of the curves and
    marked along the bottom edge at their size, with the reason on hover. `smoke_failed` (run_id,
    scale, seeds, reasons: `analysis.smoke_failed_points`) rings the curve's points whose smoke
    test failed, with the reasons on hover. `forecasts` (run id -> `forecast.forecast` output)
    adds a labelled forecast band beyond the run's last measured size, with the backtest's error
    in its legend entry and hover. Legend names keep only what differs between the runs' labels;
    hovers carry the full label.

    Drawn in layers, bottom to top, one helper each: per run its curve with band, growth fit,
    threshold line and domain curve; the claimed curves; phase bands; guidance and level lines;
    unfinished points; threshold labels; failed smoke tests; the axes."""
    two = domain_curves is not None and not domain_curves.empty
    fig = make_subplots(
        rows=2 if two else 1,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        row_heights=[0.7, 0.3] if two else [1.0],
        subplot_titles=(
            "General-knowledge degradation (perplexity change)",
            "Domain improvement (perplexity drop)",
        )
        if two
        else None,
    )
    ov = _Overlay(fig)
    ratios = [1.0]  # every ratio drawn: the y range
    run_ids = list(curves["run_id"].unique())
    legend = dict(zip(run_ids, short_names([labels.get(r, r) for r in run_ids])))
    thr_labels: list[tuple[float, str, str]] = []  # (log10 x, text, colour)
    for i, (run_id, c) in enumerate(curves.groupby("run_id", sort=False)):
        c = c.sort_values("scale")
        color = PALETTE[i % len(PALETTE)]
        name = labels.get(run_id, run_id)
        short = legend.get(run_id, name)
        ratios += _curve_layer(fig, c, run_id, name, short, color)
        f = (fits or {}).get(run_id)
        if f is not None:
            _fit_layer(fig, c, f, run_id, short, color)
        t = (threshold or {}).get(run_id)
        if t:
            thr_labels.append(_threshold_line(ov, t, c["scale"].min(), color))
        fc = (forecasts or {}).get(run_id)
        if fc:
            ratios += _forecast_layer(fig, ov, c, fc, run_id, short, color)
        if two:
            _domain_layer(fig, domain_curves[domain_curves.run_id == run_id], short, color)
    if paper is not None and not paper.empty:
        ratios += _claimed_layer(fig, paper)
    lo_r, hi_r = max(min(ratios) * 0.8, 1e-3), max(ratios) * 1.25
    _phase_bands(ov, cutoffs, lo_r, hi_r)
    _guidance_lines(ov, guidance, lo_r, hi_r)
    ov.hline(pct_to_ratio(level), line=dict(color="#424242", width=1))
    colors = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(curves["run_id"].unique())}
    if unfinished is None:
        unfinished = curves.iloc[0:0]
    if not unfinished.empty:
        _unfinished_layer(fig, unfinished, colors, labels, lo_r)
    xs = list(curves["scale"]) + (
        list(paper["scale"]) if paper is not None and not paper.empty else []
    )
    xs += list(unfinished["scale"])
    for fc in (forecasts or {}).values():
        xs += [p["scale"] for p in (fc or {}).get("predictions", [])]
    if thr_labels:
        _threshold_labels(ov, thr_labels, xs)
    if smoke_failed is not None and not smoke_failed.empty:
        _smoke_failed_layer(fig, smoke_failed, curves, labels)
    ov.apply()
    _threshold_axes(fig, lo_r, hi_r, xs, two)
    return fig


def _curve_layer(fig, c: pd.DataFrame, run_id, name: str, short: str, color: str) -> list:
    """One run's mean curve, with its 95 % band over seeds when it has several; returns the
    ratios drawn."""
    r_mean = pct_to_ratio(c["mean"])
    drawn = list(r_mean)
    if (c["n"] > 1).any():
        lo, hi = (
            pct_to_ratio(c["ci_low"]).clip(min=1e-3),
            pct_to_ratio(c["ci_high"]).clip(min=1e-3),
        )
        fig.add_trace(
            go.Scatter(
                x=list(c["scale"]) + list(c["scale"])[::-1],
                y=list(hi) + list(lo)[::-1],
                fill="toself",
                fillcolor=color,
                opacity=0.18,
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                name=f"{name} 95% CI",
            ),
            row=1,
            col=1,
        )
        drawn += list(hi) + list(lo)
    fig.add_trace(
        go.Scatter(
            x=c["scale"],
            y=r_mean,
            mode="lines+markers",
            name=short,
            legendgroup=run_id,
            line=dict(color=color, width=2.5),
            customdata=np.stack([c["mean"], c["n"]], axis=1),
            hovertemplate="n=%{x:,}<br>degradation %{customdata[0]:+,.1f}%<br>seeds %{customdata[1]}<extra>"
            + name
            + "</extra>",
        ),
        row=1,
        col=1,
    )
    return drawn


def _fit_layer(fig, c: pd.DataFrame, f, run_id, short: str, color: str) -> None:
    """The run's best growth fit, dashed, over its measured range."""
    xs = np.geomspace(c["scale"].min(), c["scale"].max(), 60)
    yr = np.clip(pct_to_ratio(f.predict(xs)), 1e-3, None)
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=yr,
            mode="lines",
            line=dict(color=color, dash="dash", width=1),
            name=f"{short}: {f.name} fit (R² {f.r2:.2f})",
            legendgroup=run_id,
            hoverinfo="skip",
        ),
        row=1,
        col=1,
    )


def _forecast_layer(
    fig, ov: _Overlay, c: pd.DataFrame, fc: dict, run_id, short: str, color: str
) -> list:
    """The forecast beyond the last measured size: a hatched band (95 % interval) and a dotted
    line from the last measured mean, labelled "forecast" on the chart and in the legend, with
    the backtest's error beside it; returns the ratios drawn."""
    preds = fc.get("predictions") or []
    if not preds:
        return []
    last = c.iloc[-1]
    xs = [float(last["scale"])] + [p["scale"] for p in preds]
    mid = pct_to_ratio(np.array([float(last["mean"])] + [p["pct"] for p in preds]))
    lo = np.clip(
        pct_to_ratio(np.array([float(last["mean"])] + [p["lo"] for p in preds])), 1e-3, None
    )
    hi = np.clip(
        pct_to_ratio(np.array([float(last["mean"])] + [p["hi"] for p in preds])), 1e-3, None
    )
    bt = backtest_text(fc.get("backtest"), short=True)
    fig.add_trace(
        go.Scatter(
            x=xs + xs[::-1],
            y=list(hi) + list(lo)[::-1],
            fill="toself",
            fillcolor=color,
            fillpattern=dict(shape="/", fgcolor=color, fgopacity=0.35),
            opacity=0.25,
            line=dict(width=0),
            hoverinfo="skip",
            showlegend=False,
            legendgroup=run_id,
            name=f"{short}: forecast 95% interval",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=np.clip(mid, 1e-3, None),
            mode="lines+markers",
            marker=dict(symbol="circle-open", size=7, color=color),
            line=dict(color=color, dash="dot", width=2),
            name=f"{short}: forecast ({fc['model']}; {bt})",
            legendgroup=run_id,
            customdata=np.stack(
                [
                    [float(last["mean"])] + [p["pct"] for p in preds],
                    [float(last["mean"])] + [p["lo"] for p in preds],
                    [float(last["mean"])] + [p["hi"] for p in preds],
                ],
                axis=1,
            ),
            hovertemplate="FORECAST, not measured<br>n=%{x:,}<br>%{customdata[0]:+,.0f}% "
            "[%{customdata[1]:+,.0f}, %{customdata[2]:+,.0f}]<br>"
            + fc["model"]
            + "; "
            + bt
            + "<extra></extra>",
        ),
        row=1,
        col=1,
    )
    ov.annotation(
        x=math.log10(xs[-1]),
        y=math.log10(max(float(mid[-1]), 1e-3)),
        text=f"forecast<br><sub>{bt}</sub>",
        showarrow=False,
        xanchor="right",
        yanchor="bottom",
        font=dict(color=color, size=11),
    )
    return list(lo) + list(hi)


def _threshold_line(ov: _Overlay, t: float, smallest: float, color: str) -> tuple[float, str, str]:
    """A dotted vertical line at the run's threshold; returns its label (placed later, in
    rows that do not overlap)."""
    ov.vline(t, line=dict(color=color, dash="dot", width=1.5))
    text = (
        f"threshold ≈ {t:,.0f}"
        if t > smallest
        else f"≤ {t:,.0f}: above the level from the first point"
    )
    return math.log10(t), text, color


def _domain_layer(fig, d: pd.DataFrame, short: str, color: str) -> None:
    """The run's domain improvement in the lower panel."""
    d = d.sort_values("scale")
    fig.add_trace(
        go.Scatter(
            x=d["scale"],
            y=d["mean"],
            mode="lines+markers",
            line=dict(color=color, width=1.5),  # measured: solid (dashes are fits)
            marker=dict(size=5),
            name=f"{short} (domain)",
            showlegend=False,
            hovertemplate="n=%{x:,}<br>domain ppl %{y:+.1f}% better<extra></extra>",
        ),
        row=2,
        col=1,
    )


def _claimed_layer(fig, paper: pd.DataFrame) -> list:
    """The curves claimed by Martz 2025, one style per domain; returns the ratios drawn."""
    drawn: list = []
    extra = ["longdash", "dashdot", "dot"]
    for k, (dom, p) in enumerate(paper.groupby("domain")):
        r = pct_to_ratio(p["degradation_pct"])
        drawn += list(r)
        style = CLAIMED_STYLES.get(
            dom, dict(color="#757575", dash=extra[k % len(extra)], symbol="diamond")
        )
        fig.add_trace(
            go.Scatter(
                x=p["scale"],
                y=r,
                mode="lines+markers",
                name=f"claimed, {dom} ({CLAIMED_SOURCE}, GPT-2)",
                line=dict(color=style["color"], dash=style["dash"], width=1.5),
                marker=dict(symbol=style["symbol"], size=7, color=style["color"]),
                hovertemplate="n=%{x:,}<br>"
                + f"{dom}: claimed %{{customdata:+,.1f}}%<extra>{CLAIMED_SOURCE} (GPT-2 124M)</extra>",
                customdata=p["degradation_pct"],
            ),
            row=1,
            col=1,
        )
    return drawn


def _phase_bands(ov: _Overlay, cutoffs, lo_r: float, hi_r: float) -> None:
    """One tinted band per phase, clipped to what is on screen, named at the right edge."""
    edges = [0.0, *(pct_to_ratio(c) for c in cutoffs), float("inf")]
    for name, a, b in zip(PHASES, edges[:-1], edges[1:]):
        a_, b_ = max(a, lo_r), min(b, hi_r)
        if a_ < b_:
            ov.hrect(a_, b_, fillcolor=PHASE_COLORS[name], opacity=0.07, line=dict(width=0))
            ov.annotation(
                x=1,
                xref="x domain",
                y=math.log10(math.sqrt(a_ * b_)),
                text=name,
                showarrow=False,
                xanchor="right",
                font=dict(size=10, color=PHASE_COLORS[name]),
            )


def _guidance_lines(ov: _Overlay, guidance, lo_r: float, hi_r: float) -> None:
    """Deployment guidance levels as dash-dotted lines; lines closer than a label's height
    share one label ("+20% / +50% guidance")."""
    named: list[list[float]] = []
    for g in sorted(guidance):
        y = math.log10(pct_to_ratio(g))
        if named and y - math.log10(pct_to_ratio(named[-1][-1])) < _min_gap(lo_r, hi_r):
            named[-1].append(g)
        else:
            named.append([g])
    for g in guidance:
        ov.hline(pct_to_ratio(g), line=dict(color="#9e9e9e", width=1, dash="dashdot"))
    for group in named:
        ov.annotation(
            x=0,
            xref="x domain",
            y=math.log10(pct_to_ratio(group[-1])),
            text=" / ".join(pct_label(g) for g in group) + " guidance",
            showarrow=False,
            xanchor="left",
            yshift=8,
            font=dict(size=9, color="#757575"),
        )


def _unfinished_layer(fig, unfinished: pd.DataFrame, colors: dict, labels: dict, lo_r) -> None:
    """Points left out of the curves (stopped, diverged, failed), one row of markers per status
    near the bottom edge, the reason on hover."""
    symbols = {"stopped": "triangle-down", "diverged": "x", "failed": "circle-x"}
    for k, (status, u) in enumerate(unfinished.groupby("status", sort=True)):
        fig.add_trace(
            go.Scatter(
                x=u["scale"],
                y=[lo_r * 1.12 * 1.18**k] * len(u),  # one row per status, near the bottom
                mode="markers",
                marker=dict(
                    symbol=symbols.get(status, "square-x"),
                    size=11,
                    color=[colors.get(r, "#616161") for r in u["run_id"]],
                    line=dict(width=1.5, color="#212121"),
                ),
                name=f"{status}: not in the curve",
                hovertext=[
                    f"{labels.get(r, r)}<br>n={sc:,}, seed {sd}: {status}"
                    + (f"<br>{str(e)[:160]}" if isinstance(e, str) and e else "")
                    for r, sc, sd, e in zip(
                        u["run_id"], u["scale"], u["seed"], u.get("error", [None] * len(u))
                    )
                ],
                hoverinfo="text",
            ),
            row=1,
            col=1,
        )


def _threshold_labels(ov: _Overlay, thr_labels: list[tuple[float, str, str]], xs: list) -> None:
    """The thresholds' labels along the top, in as many rows as needed not to overlap."""
    span = math.log10(max(xs)) - math.log10(min(xs)) if xs else 1.0
    rows = _label_rows([x for x, _, _ in thr_labels], [t for _, t, _ in thr_labels], span)
    for (x, text, color), row in zip(thr_labels, rows):
        ov.annotation(
            x=x,
            y=1,
            yref="y domain",
            yanchor="top",
            text=text,
            showarrow=False,
            font=dict(color=color, size=11),
            bgcolor="rgba(255,255,255,0.85)",
            yshift=-2 - 17 * row,
        )


def _smoke_failed_layer(fig, smoke_failed: pd.DataFrame, curves: pd.DataFrame, labels) -> None:
    """A ring around each curve point whose smoke test failed, the reasons on hover."""
    at = {(r, s): m for r, s, m in zip(curves["run_id"], curves["scale"], curves["mean"])}
    rows = [
        (r, s, at[(r, s)], seeds, reasons)
        for r, s, seeds, reasons in zip(
            smoke_failed["run_id"],
            smoke_failed["scale"],
            smoke_failed["seeds"],
            smoke_failed["reasons"],
        )
        if (r, s) in at
    ]
    if not rows:
        return
    fig.add_trace(
        go.Scatter(
            x=[r[1] for r in rows],
            y=[pct_to_ratio(r[2]) for r in rows],
            mode="markers",
            marker=dict(
                symbol="circle-x-open",
                size=14,
                color=SMOKE_FAIL_COLOR,
                line=dict(width=1.5, color=SMOKE_FAIL_COLOR),
            ),
            name="smoke test failed",
            hovertext=[
                f"<b>smoke test failed</b> · {labels.get(r, r)}<br>n={s:,}: "
                + "<br>".join(reasons[:6])
                + (f"<br>… {len(reasons) - 6} more" if len(reasons) > 6 else "")
                for r, s, _, _, reasons in rows
            ],
            hoverinfo="text",
        ),
        row=1,
        col=1,
    )


def _threshold_axes(fig, lo_r: float, hi_r: float, xs: list, two: bool) -> None:
    """Log axes: the y axis in perplexity ratio labelled in %, the x axis in samples."""
    fig.update_yaxes(**_ratio_axis(lo_r, hi_r), title_text="general PPL change", row=1, col=1)
    fig.update_xaxes(type="log", **log_x_ticks(xs))
    fig.update_xaxes(title_text="training samples (log scale)", row=2 if two else 1, col=1)
    if two:
        fig.update_yaxes(title_text="domain PPL drop %", ticksuffix="%", row=2, col=1)
    fig.update_layout(
        height=640 if two else 480,
        margin=dict(l=60, r=20, t=40, b=50),
        legend=dict(orientation="h", y=-0.15),
        hovermode="closest",
        template="plotly_white",
    )


def loss_sparkline(losses: pd.DataFrame, height: int = 120) -> go.Figure:
    """The loss of the point in flight. A sparkline: its y ticks are the lowest and the highest
    loss only (plotly's ticks at 1, 1.5, 2 crowd a 120-pixel chart and say nothing)."""
    fig = go.Figure(
        go.Scatter(
            x=losses["step"],
            y=losses["loss"],
            mode="lines",
            line=dict(width=1.5, color="#1565c0"),
            hovertemplate="step %{x:,}: loss %{y:.3f}<extra></extra>",
        )
    )
    y = losses["loss"].replace([np.inf, -np.inf], np.nan).dropna()
    if not y.empty:
        lo, hi = float(y.min()), float(y.max())
        ticks = [lo] if hi - lo < 1e-9 else [lo, hi]
        fig.update_yaxes(tickvals=ticks, ticktext=[f"{t:.2f}" for t in ticks])
    fig.update_xaxes(nticks=4, tickformat=",d")
    fig.update_layout(
        height=height,
        margin=dict(l=30, r=5, t=5, b=20),
        template="plotly_white",
        xaxis_title=None,
        yaxis_title="loss",
        showlegend=False,
    )
    return fig


def phase_timeline(tables: dict[str, pd.DataFrame]) -> go.Figure:
    """One row per run: each measured scale coloured by its phase, on a log x axis. The legend
    lists the phases in order of severity, whichever run meets them first."""
    fig = go.Figure()
    seen = set()
    for name in PHASES:
        for label, t in tables.items():
            sub = t[t.phase == name]
            if sub.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=sub["scale"],
                    y=[label] * len(sub),
                    mode="markers",
                    name=name,
                    marker=dict(size=18, color=PHASE_COLORS[name], symbol="square"),
                    legendgroup=name,
                    legendrank=PHASES.index(name),
                    showlegend=name not in seen,
                    customdata=sub["mean"],
                    hovertemplate="n=%{x:,}: %{customdata:+,.1f}%<extra>" + name + "</extra>",
                )
            )
            seen.add(name)
    allx = pd.concat([t["scale"] for t in tables.values()]) if tables else []
    fig.update_xaxes(type="log", title_text="training samples (log scale)", **log_x_ticks(allx))
    fig.update_layout(
        height=140 + 50 * len(tables),
        margin=dict(l=10, r=10, t=30, b=40),
        template="plotly_white",
        legend=dict(orientation="h", y=1.15, traceorder="normal"),
    )
    fig.update_yaxes(categoryorder="array", categoryarray=list(tables)[::-1])
    return fig


def signed_log(v):
    """The sign-preserving log of a percentage, sign(v) * log10(1 + |v|): one colour scale
    shows +5 % and +5,000 % both, and -99 % stays on the other side of zero."""
    return np.sign(v) * np.log10(1 + np.abs(v))


def signed_log_colour(z: np.ndarray, title: str, marks: tuple[float, ...]) -> dict:
    """A heatmap's colour settings for a table of percentages `z`: the cells coloured by
    `signed_log`, a range symmetric about 0 (at least +-1 decade) and a colourbar labelled in
    percent at those of `marks` the range holds. Spread into `go.Heatmap(...)`."""
    zc = signed_log(z)
    span = max(float(np.nanmax(np.abs(zc))) if np.isfinite(zc).any() else 1.0, 1.0)
    shown = [m for m in marks if abs(signed_log(m)) <= span * 1.05]
    return dict(
        z=zc,
        zmid=0,
        zmin=-span,
        zmax=span,
        colorbar=dict(
            title=title,
            tickvals=[float(signed_log(m)) for m in shown],
            ticktext=[pct_label(m) if m else "0" for m in shown],
        ),
    )


def heatmap(matrix: pd.DataFrame, title: str, value_label: str) -> go.Figure:
    z = matrix.values.astype(float)
    text = [[("" if np.isnan(v) else pct_label(v)) for v in row] for row in z]
    fig = go.Figure(
        go.Heatmap(
            x=list(matrix.columns),
            y=list(matrix.index),
            text=text,
            texttemplate="%{text}",
            colorscale="RdBu_r",
            customdata=z,
            hovertemplate="trained on %{y}<br>evaluated on %{x}<br>"
            + value_label
            + " %{customdata:+,.1f}%<extra></extra>",
            **signed_log_colour(z, value_label, (-99, 0, 10, 100, 1000, 10000, 100000)),
        )
    )
    fig.update_layout(
        title=title,
        height=max(320, 120 + 60 * len(matrix.index)),
        template="plotly_white",
        xaxis_title="evaluated on",
        yaxis_title="trained on",
        margin=dict(l=10, r=10, t=50, b=40),
    )
    return fig


def compare_figure(
    curves: pd.DataFrame,
    labels: dict[str, str],
    y_title: str,
    ratio_axis: bool = False,
    unit: str = "%",
) -> go.Figure:
    """Mean curve per run on a log x axis; `ratio_axis` puts degradation % on the same log-ratio
    y axis as the Threshold chart. Legend names keep what differs between the labels. `unit`
    "%" signs values and suffixes the axis; "" plots a count as it is."""
    hover = "%{customdata:+,.1f}%" if unit == "%" else "%{customdata:,.3g}" + unit
    fig = go.Figure()
    ratios = [1.0]
    run_ids = list(curves["run_id"].unique())
    legend = dict(zip(run_ids, short_names([labels.get(r, r) for r in run_ids])))
    for i, (run_id, c) in enumerate(curves.groupby("run_id", sort=False)):
        c = c.sort_values("scale")
        y = pct_to_ratio(c["mean"]) if ratio_axis else c["mean"]
        if ratio_axis:
            ratios += list(np.atleast_1d(y))
        fig.add_trace(
            go.Scatter(
                x=c["scale"],
                y=y,
                mode="lines+markers",
                customdata=c["mean"],
                hovertemplate="n=%{x:,}: "
                + hover
                + "<extra>"
                + str(labels.get(run_id, run_id))
                + "</extra>",
                name=legend[run_id],
                line=dict(color=PALETTE[i % len(PALETTE)]),
            )
        )
    fig.update_xaxes(
        type="log", title_text="training samples (log scale)", **log_x_ticks(curves["scale"])
    )
    if ratio_axis:
        lo, hi = max(min(ratios) * 0.8, 1e-3), max(ratios) * 1.25
        fig.update_yaxes(**_ratio_axis(lo, hi))
    elif unit == "%":
        fig.update_yaxes(ticksuffix="%")
    fig.update_yaxes(title_text=y_title)
    fig.update_layout(
        height=420,
        template="plotly_white",
        legend=dict(orientation="h", y=-0.2),
        margin=dict(l=60, r=10, t=20, b=40),
    )
    return fig


CHANCE_PCT = 25.0  # four options per multiple-choice question


def mc_figure(
    acc: pd.DataFrame, labels: dict[str, str], before: dict[str, float] | None = None
) -> go.Figure:
    """Multiple-choice accuracy after fine-tuning (%) per dataset size, each run's accuracy
    before fine-tuning as a dotted line in its colour, and the 25 % chance level."""
    run_ids = list(acc["run_id"].unique())
    legend = dict(zip(run_ids, short_names([labels.get(r, r) for r in run_ids])))
    fig = compare_figure(acc, labels, "accuracy after fine-tuning (%)")
    for i, r in enumerate(run_ids):
        b = (before or {}).get(r)
        if b is None or not np.isfinite(b):
            continue
        color = PALETTE[i % len(PALETTE)]
        xs = sorted(acc.loc[acc["run_id"] == r, "scale"])
        fig.add_trace(
            go.Scatter(
                x=[xs[0], xs[-1]],
                y=[b, b],
                mode="lines",
                line=dict(color=color, dash="dot", width=1.5),
                name=f"{legend[r]}: before ({b:.1f}%)",
                hovertemplate=f"before fine-tuning: {b:.1f}%<extra>{labels.get(r, r)}</extra>",
            )
        )
    fig.add_hline(
        y=CHANCE_PCT,
        line=dict(color="#757575", width=1, dash="dash"),
        annotation_text="chance (25 %)",
        annotation_position="bottom right",
        annotation_font=dict(size=10, color="#616161"),
    )
    top = max([CHANCE_PCT, *acc["mean"].dropna(), *[v for v in (before or {}).values() if v]])
    fig.update_yaxes(range=[0, min(100.0, top * 1.15 + 2)])
    return fig


def fro_vs_rank(totals: pd.DataFrame, value: str = "fro_norm", name: str = "||ΔW||_F") -> go.Figure:
    """||dW||_F of the whole update (or another column of `spectral_totals`, e.g. the intruder
    dimensions, on a linear axis) against LoRA rank (log x), one line per dataset size; full
    fine-tuning, which has no rank, as an open marker at the right edge (Rathore et al. 2025)."""
    fig = go.Figure()
    totals = totals[totals[value].notna()]
    lora = totals[totals["method"].isin(["lora", "qlora"]) & totals["rank"].notna()]
    full = totals[totals["method"] == "full"]
    ranks = sorted(lora["rank"].unique())
    x_full = (max(ranks) * 2) if ranks else 1
    for i, (scale, c) in enumerate(lora.groupby("scale")):
        c = c.groupby("rank", as_index=False)[value].mean()
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=c["rank"],
                y=c[value],
                mode="lines+markers",
                name=f"LoRA, n={scale:,}",
                line=dict(color=color),
                hovertemplate="r=%{x}: " + name + " %{y:.3g}<extra></extra>",
            )
        )
        f = full[full["scale"] == scale]
        if not f.empty:
            fig.add_trace(
                go.Scatter(
                    x=[x_full],
                    y=[float(f[value].mean())],
                    mode="markers",
                    marker=dict(symbol="diamond-open", size=11, color=color),
                    name=f"full FT, n={scale:,}",
                    hovertemplate="full fine-tuning: " + name + " %{y:.3g}<extra></extra>",
                )
            )
    ticks = [*ranks, x_full] if not full.empty else ranks
    labels = [f"{r:.0f}" for r in ranks] + (["full"] if not full.empty else [])
    fig.update_xaxes(
        type="log", title_text="LoRA rank r (log scale)", tickvals=ticks, ticktext=labels
    )
    if value == "fro_norm":
        fig.update_yaxes(type="log", title_text="||ΔW||_F of the whole update (log scale)")
    else:
        fig.update_yaxes(title_text=name)
    fig.update_layout(
        height=400,
        template="plotly_white",
        legend=dict(orientation="h", y=-0.25),
        margin=dict(l=60, r=10, t=20, b=40),
    )
    return fig


def layer_heatmap(matrix: pd.DataFrame, value_label: str) -> go.Figure:
    """A layer x module table (e.g. top-k singular-vector cosine) as a heatmap; the colour range
    follows the data, so small differences (cosines of 0.9990 vs 0.9999) stay visible."""
    fig = go.Figure(
        go.Heatmap(
            z=matrix.values.astype(float),
            x=list(matrix.columns),
            y=[str(i) for i in matrix.index],
            colorscale="Viridis",
            colorbar=dict(title=value_label),
            hovertemplate="layer %{y}, %{x}: %{z:.5g}<extra></extra>",
        )
    )
    fig.update_layout(
        height=max(300, 80 + 16 * len(matrix.index)),
        template="plotly_white",
        xaxis_title="module",
        yaxis_title="layer",
        margin=dict(l=10, r=10, t=20, b=40),
    )
    return fig


def profile_figure(profile: list[float], selected: list[int]) -> go.Figure:
    """ADAPT-Q's activation profile: mean |activation| per block, the trained blocks highlighted."""
    sel = set(selected)
    fig = go.Figure(
        go.Bar(
            x=list(range(len(profile))),
            y=profile,
            marker_color=[PALETTE[1] if i in sel else "#b0bec5" for i in range(len(profile))],
            hovertemplate="block %{x}: %{y:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        height=300,
        template="plotly_white",
        xaxis_title="transformer block (orange: trained full-rank; grey: frozen, quantized)",
        yaxis_title="mean |activation|",
        margin=dict(l=60, r=10, t=20, b=40),
    )
    return fig


# distinct shapes in turn (a key beyond the last one repeats a shape); hollow variants last
PARETO_SYMBOLS = [
    "circle",
    "square",
    "diamond",
    "triangle-up",
    "x",
    "cross",
    "star",
    "hexagon",
    "triangle-down",
    "pentagon",
    "hourglass",
    "bowtie",
    "star-triangle-up",
    "triangle-left",
    "asterisk-open",
    "circle-open",
    "square-open",
    "diamond-open",
]


def pareto_figure(df: pd.DataFrame, x: str, y: str, front: pd.Series) -> go.Figure:
    """Any two metrics of every (run, size): colour = dataset size on a log scale, symbol =
    method / rank (and replay fraction when the points differ in it), the Pareto front as a
    line through its points (`pareto.pareto_front`)."""
    from .pareto import differs_in_replay, metric_label, series_name

    d = df[df[[x, y]].notna().all(axis=1)].copy()
    replay = differs_in_replay(d)
    d["series"] = d.apply(series_name, axis=1, with_replay=replay) if not d.empty else []
    fig = go.Figure()
    lo, hi = (float(d["scale"].min()), float(d["scale"].max())) if not d.empty else (1.0, 10.0)
    for i, (name, g) in enumerate(d.groupby("series", sort=True)):
        fig.add_trace(
            go.Scatter(
                x=g[x],
                y=g[y],
                mode="markers",
                name=name,
                marker=dict(
                    symbol=PARETO_SYMBOLS[i % len(PARETO_SYMBOLS)],
                    size=10,
                    color=np.log10(g["scale"].astype(float)),
                    cmin=math.log10(lo),
                    cmax=math.log10(max(hi, lo * 1.01)),
                    colorscale="Viridis",
                    showscale=i == 0,
                    colorbar=dict(
                        title="samples",
                        tickvals=[math.log10(v) for v in log_x_ticks(d["scale"])["tickvals"]],
                        ticktext=log_x_ticks(d["scale"])["ticktext"],
                    ),
                    line=dict(width=0.5, color="#424242"),
                ),
                # label, size, run id: the hover shows the first two; a click is looked up by
                # the last two (`pareto.picked_point`)
                customdata=np.stack([g["label"], g["scale"], g["run_id"]], axis=1),
                hovertemplate="%{customdata[0]}<br>n=%{customdata[1]:,}<br>"
                + f"{metric_label(x)}: %{{x:,.4g}}<br>{metric_label(y)}: %{{y:,.4g}}<extra></extra>",
            )
        )
    f = d[front.reindex(d.index).fillna(False).to_numpy(dtype=bool)].sort_values(x)
    if not f.empty:
        fig.add_trace(
            go.Scatter(
                x=f[x],
                y=f[y],
                mode="lines",
                name="Pareto front",
                line=dict(color="#b71c1c", width=2, dash="dash"),
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        xaxis_title=metric_label(x),
        yaxis_title=metric_label(y),
        height=520,
        template="plotly_white",
        legend=dict(orientation="h", y=-0.2),
        margin=dict(l=60, r=20, t=30, b=60),
    )
    return fig


def item_heatmap(
    matrix: pd.DataFrame, first: pd.Series | None = None, texts: dict | None = None
) -> go.Figure:
    """What was forgotten: probe statements × dataset sizes, coloured by each statement's own
    perplexity change (log of the ratio after/before, so +100 % and −50 % sit symmetrically);
    a marker where each statement first crossed the level (`forgotten.first_crossing`)."""
    texts = texts or {}
    names = [str(texts.get(int(i), f"item {i}"))[:60] for i in matrix.index]
    x = [f"{int(c):,}" for c in matrix.columns]
    z = np.log10(pct_to_ratio(matrix.to_numpy(dtype=float)).clip(1e-6))
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=x,
            y=names,
            colorscale="RdBu_r",
            zmid=0.0,
            customdata=matrix.to_numpy(dtype=float),
            hovertemplate="%{y}<br>%{x} samples: %{customdata:+.1f} %<extra></extra>",
            colorbar=dict(title="log10 PPL ratio"),
        )
    )
    if first is not None:
        hit = first.dropna()
        fig.add_trace(
            go.Scatter(
                x=[f"{int(v):,}" for v in hit],
                y=[names[list(matrix.index).index(i)] for i in hit.index],
                mode="markers",
                marker=dict(symbol="x", color="black", size=9),
                name="first crossed the level",
            )
        )
    fig.update_layout(
        xaxis_title="dataset size (samples)",
        yaxis=dict(autorange="reversed"),
        height=max(300, 24 * len(names) + 120),
        margin=dict(l=10, r=10, t=30, b=40),
    )
    return fig


def replay_heatmap(
    matrix: pd.DataFrame,
    value_label: str,
    better: str = "lower",
    seeds: pd.DataFrame | None = None,
    level: float | None = None,
) -> go.Figure:
    """A (replay fraction x dataset size) table of mean percentages as a heatmap (the
    Mitigation page): colour by the sign-preserving log of the value, blue where it is good
    (`better` = "lower" for degradation, "higher" for domain improvement); cells not measured
    stay blank. `seeds` (same shape) goes into the hover; with `level`, cells at or above it
    are marked with a dot."""
    z = matrix.to_numpy(dtype=float)
    x = [f"{int(s):,}" for s in matrix.columns]
    y = [f"{r:g}" for r in matrix.index]
    n = seeds.reindex_like(matrix).to_numpy() if seeds is not None else np.full(z.shape, np.nan)

    def cell(v: float) -> str:
        if np.isnan(v):
            return ""
        return pct_label(v) + (" •" if level is not None and v >= level else "")

    text = [[cell(v) for v in row] for row in z]
    fig = go.Figure(
        go.Heatmap(
            x=x,
            y=y,
            text=text,
            texttemplate="%{text}",
            colorscale="RdBu_r" if better == "lower" else "RdBu",
            customdata=np.dstack([z, n]),
            hovertemplate="replay %{y}, %{x} samples<br>"
            + value_label
            + " %{customdata[0]:+,.1f}% (mean of %{customdata[1]} seed(s))<extra></extra>",
            **signed_log_colour(z, value_label, (-99, -50, -10, 0, 10, 100, 1000, 10000)),
        )
    )
    fig.update_layout(
        height=max(300, 120 + 50 * len(matrix.index)),
        template="plotly_white",
        xaxis_title="training samples",
        yaxis_title="replay fraction",
        xaxis=dict(type="category"),
        yaxis=dict(type="category"),
        margin=dict(l=10, r=10, t=30, b=40),
    )
    return fig


def replay_curve(by_replay: list[tuple[float, float]], level: float, answer=None) -> go.Figure:
    """Degradation at the planner's dataset size against the replay fraction (measured
    fractions, interpolated in size), the level as a line and, when the planner answered, its
    fraction with its 95 % interval. `answer`: (fraction, (low, high) or None)."""
    xs = [r for r, _ in by_replay]
    ys = [v for _, v in by_replay]
    ratios = [float(pct_to_ratio(v)) for v in ys] + [float(pct_to_ratio(level))]
    fig = go.Figure(
        go.Scatter(
            x=xs,
            y=[float(pct_to_ratio(v)) for v in ys],
            customdata=ys,
            mode="lines+markers",
            name="degradation at this size",
            line=dict(color=PALETTE[0]),
            hovertemplate="replay %{x:g}: %{customdata:+,.1f}%<extra></extra>",
        )
    )
    fig.add_hline(
        y=float(pct_to_ratio(level)),
        line=dict(color="#b71c1c", dash="dash"),
        annotation_text=f"level {level:g} %",
        annotation_position="top right",
    )
    if answer is not None:
        r, iv = answer
        if iv is not None and all(math.isfinite(v) for v in iv) and iv[1] > iv[0]:
            fig.add_vrect(x0=iv[0], x1=iv[1], fillcolor=PALETTE[2], opacity=0.12, line_width=0)
        fig.add_vline(
            x=r,
            line=dict(color=PALETTE[2]),
            annotation_text=f"replay {r:.3g}",
            annotation_position="bottom right",
        )
    lo, hi = max(min(ratios) * 0.8, 1e-3), max(ratios) * 1.25
    fig.update_yaxes(**_ratio_axis(lo, hi), title_text="general PPL change")
    fig.update_xaxes(title_text="replay fraction")
    fig.update_layout(
        height=320,
        template="plotly_white",
        showlegend=False,
        margin=dict(l=60, r=10, t=20, b=40),
    )
    return fig
