"""Figures for ``logfile.pdf``: picks on micrographs, histograms, curves, scatter plots, score maps, galleries.

Every ``*_figure`` function returns one ``pdf.Page`` (``gallery_figure``: a list of pages); ``write_pdf``
writes them as one PDF. Drawing is done by our own PDF writer (``pdf.py``, numpy only): no matplotlib, so
importing this module and writing a logfile takes milliseconds.

Micrograph pixel coordinates (x right, y down, pixel centres at integers, as in RELION coordinate files)
are flipped onto the page's y-up coordinates here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from .pdf import Colour, Page, rgb, text_width
from .pdf import write_pdf as _write_pages

MAX_DISPLAY_PX = 1024
MAX_TILE_PX = 128  # gallery tiles are ~60 pt wide: more pixels only make the file bigger
_PERCENTILE_SAMPLES = 1 << 17  # display percentiles are estimated from about this many pixels

# Fixed palette for curves and scatter groups (the "tab10" colours)
PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)

# matplotlib's viridis (CC0) sampled at 9 evenly spaced points; the colour table interpolates between them
_VIRIDIS_ANCHORS = np.array(
    [
        (0.267, 0.0049, 0.3294),
        (0.2788, 0.1755, 0.4834),
        (0.2297, 0.3224, 0.5457),
        (0.1727, 0.4488, 0.5579),
        (0.1276, 0.5669, 0.5506),
        (0.1579, 0.6838, 0.5017),
        (0.3692, 0.7889, 0.3829),
        (0.6785, 0.8637, 0.1895),
        (0.9932, 0.9062, 0.1439),
    ]
)

SQUARE = (540.0, 540.0)  # 7.5 x 7.5 inch, as the matplotlib figures were
WIDE = (540.0, 360.0)
_MARGIN = 12.0
_TITLE_SIZE = 11.0
_LABEL_SIZE = 9.0
_TICK_SIZE = 8.0
_TICK_LEN = 4.0
_PICK_LINE = 0.8
_PICK_COLOUR = "yellow"
_TRUTH_COLOUR = "cyan"
_TRUTH_SCALE = 1.15
_MARK_COLOUR = (0.0, 0.8, 0.0)

# -- images ---------------------------------------------------------------------------------------------


def _block_average(image: np.ndarray, max_px: int) -> tuple[np.ndarray, int]:
    """Average ``f x f`` blocks so that the result is <= ``max_px`` on its longer side; returns (img, f)."""
    img = np.asarray(image, dtype=np.float32)
    f = max(1, int(np.ceil(max(img.shape) / max_px)))
    if f > 1:
        ny, nx = (img.shape[0] // f) * f, (img.shape[1] // f) * f
        # summing f strided slices per axis is ~6x faster than .mean(axis=(1, 3)) on a 4096^2 micrograph
        rows = img[:ny, :nx].reshape(ny // f, f, nx)
        acc = rows[:, 0, :].copy()
        for i in range(1, f):
            acc += rows[:, i, :]
        cols = acc.reshape(ny // f, nx // f, f)
        out = cols[:, :, 0].copy()
        for i in range(1, f):
            out += cols[:, :, i]
        img = out * np.float32(1.0 / (f * f))
    return img, f


def _limits(img: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> tuple[float, float]:
    """Display range: 0.5 and 99.5 percentiles of the finite pixels unless given; never empty."""
    lo, hi = 0.0, 1.0
    if vmin is None or vmax is None:
        flat = img.ravel()
        # np.percentile's partition costs ~25 ms on 1024^2 pixels; an evenly spread subsample (odd
        # stride, so not the same few columns of every row) gives the same display range
        sample = flat[:: (flat.size // _PERCENTILE_SAMPLES) | 1]
        sample = sample[np.isfinite(sample)]
        if sample.size == 0:  # the subsample missed the few finite pixels there are
            sample = flat[np.isfinite(flat)]
        if sample.size:
            lo, hi = _percentiles(sample, (0.5, 99.5))
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _percentiles(a: np.ndarray, qs: Sequence[float]) -> list[float]:
    """``np.percentile(a, qs)`` (linear interpolation) for 1-D ``a``, without its first-call cost.

    ``np.percentile`` lazily imports part of numpy on its first call (~20 ms): a fifth of a logfile.
    """
    n = a.size
    pos = [q / 100.0 * (n - 1) for q in qs]
    below = [int(math.floor(p)) for p in pos]
    above = [min(b + 1, n - 1) for b in below]
    part = np.partition(a, sorted(set(below + above)))
    return [
        float(part[b]) + (p - b) * (float(part[c]) - float(part[b])) for p, b, c in zip(pos, below, above)
    ]


def _display_image(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Block-average to <= MAX_DISPLAY_PX and contrast-stretch (0.5-99.5 percentiles); returns (img, bin)."""
    img, f = _block_average(image, MAX_DISPLAY_PX)
    if np.isfinite(img).any():
        lo, hi = _limits(img)
        img = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    return img, f


def _gray8(img01: np.ndarray) -> np.ndarray:
    return (np.clip(np.nan_to_num(img01, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _colour_table(cmap: str) -> np.ndarray:
    """256 x 3 uint8 colour table for ``cmap`` ('gray' or 'viridis')."""
    t = np.linspace(0.0, 1.0, 256)
    if cmap in ("gray", "grey"):
        return np.repeat(_gray8(t)[:, None], 3, axis=1)
    if cmap == "viridis":
        a = np.linspace(0.0, 1.0, len(_VIRIDIS_ANCHORS))
        rgb_ = np.stack([np.interp(t, a, _VIRIDIS_ANCHORS[:, k]) for k in range(3)], axis=1)
        return (rgb_ * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f"unknown colour map {cmap!r} (use 'gray' or 'viridis')")


def _fit(nx: int, ny: int, x: float, y: float, w: float, h: float) -> tuple[float, float, float]:
    """Largest scale (points per pixel) and lower-left corner that fit nx x ny pixels centred in a box."""
    s = min(w / max(nx, 1), h / max(ny, 1))
    return s, x + 0.5 * (w - s * nx), y + 0.5 * (h - s * ny)


def _title(page: Page, title: str) -> None:
    """Bold title centred at the top; long ones (micrograph paths) are set smaller, then cut."""
    room = page.width - 2 * _MARGIN
    size = max(
        6.0, min(_TITLE_SIZE, _TITLE_SIZE * room / max(text_width(title, _TITLE_SIZE, bold=True), 1e-6))
    )
    while len(title) > 1 and text_width(title, size, bold=True) > room:
        title = title[: int(len(title) * room / text_width(title, size, bold=True)) - 2] + ".."
    page.text(page.width / 2, page.height - 20.0, title, size=size, align="center", bold=True)


# -- axes -----------------------------------------------------------------------------------------------


def nice_ticks(lo: float, hi: float, n: int = 5) -> np.ndarray:
    """About ``n`` round tick values (1, 2, 2.5 or 5 x 10^k steps) within [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return np.zeros(0)
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return np.array([lo])
    raw = (hi - lo) / max(n, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    best: np.ndarray | None = None
    step = mag
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):  # the step whose tick count is closest to n; ties: more ticks
        cand = np.arange(math.ceil(lo / (m * mag) - 1e-9), math.floor(hi / (m * mag) + 1e-9) + 1) * (m * mag)
        if best is None or abs(cand.size - n) < abs(best.size - n):
            best, step = cand, m * mag
    ticks = best if best is not None else np.array([lo, hi])
    ticks[np.abs(ticks) < step * 1e-9] = 0.0  # no "-0"
    return ticks


def _tick_labels(ticks: np.ndarray) -> list[str]:
    """Labels with just enough decimals to tell the ticks apart."""
    if ticks.size == 0:
        return []
    mag = float(np.max(np.abs(ticks)))
    if mag >= 1e5 or (0 < mag < 1e-3):
        return [f"{t:.3g}" for t in ticks]
    step = float(np.min(np.diff(ticks))) if ticks.size > 1 else max(abs(float(ticks[0])), 1.0)
    decimals = 0
    while decimals < 6 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6 * 10**decimals:
        decimals += 1
    return [f"{t:.{decimals}f}" for t in ticks]


def _log_ticks(lo: float, hi: float) -> np.ndarray:
    """Ticks at powers of ten (with 2 and 5 in between when the range spans less than two decades)."""
    a, b = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
    decades = np.arange(a, b + 1)
    if math.log10(hi / lo) < 2:
        ticks = (10.0 ** decades[:, None] * np.array([1.0, 2.0, 5.0])[None, :]).ravel()
    else:
        stride = max(1, int(math.ceil((b - a + 1) / 7)))
        ticks = 10.0 ** decades[::stride].astype(float)
    return ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))]


def _pad(lo: float, hi: float, frac: float) -> tuple[float, float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    if hi <= lo:
        half = max(abs(lo) * 0.05, 0.5)
        return lo - half, hi + half
    d = (hi - lo) * frac
    return lo - d, hi + d


class _Axes:
    """A data rectangle on a page: maps data (x, y) to points, draws frame, ticks, labels and legends."""

    def __init__(
        self,
        page: Page,
        box: tuple[float, float, float, float],
        xlim: tuple[float, float],
        ylim: tuple[float, float],
        logy: bool = False,
    ) -> None:
        self.page = page
        self.x, self.y, self.w, self.h = box
        self.xlim = (float(xlim[0]), float(xlim[1]))
        self.ylim = (float(ylim[0]), float(ylim[1]))
        self.logy = logy

    def px(self, x: np.ndarray | float) -> np.ndarray:
        x0, x1 = self.xlim
        return self.x + (np.asarray(x, dtype=float) - x0) / (x1 - x0) * self.w

    def py(self, y: np.ndarray | float) -> np.ndarray:
        y0, y1 = self.ylim
        y = np.asarray(y, dtype=float)
        if self.logy:
            with np.errstate(divide="ignore", invalid="ignore"):
                y, y0, y1 = np.log10(y), math.log10(y0), math.log10(y1)
        return self.y + (y - y0) / (y1 - y0) * self.h

    def clip(self):
        return self.page.clip(self.x, self.y, self.w, self.h)

    def draw(self, xlabel: str, ylabel: str) -> None:
        """Frame, ticks with labels, axis labels."""
        p = self.page
        p.rect(self.x, self.y, self.w, self.h, stroke="black", width=0.8)
        xt = nice_ticks(*self.xlim)
        for t, label in zip(self.px(xt), _tick_labels(xt)):
            p.line(t, self.y, t, self.y - _TICK_LEN, width=0.8)
            p.text(t, self.y - _TICK_LEN - 2, label, size=_TICK_SIZE, align="center", valign="top")
        yt = _log_ticks(*self.ylim) if self.logy else nice_ticks(*self.ylim)
        labels = [f"{t:g}" for t in yt] if self.logy else _tick_labels(yt)
        widest = 0.0
        for t, label in zip(self.py(yt), labels):
            p.line(self.x, t, self.x - _TICK_LEN, t, width=0.8)
            widest = max(
                widest,
                p.text(self.x - _TICK_LEN - 2, t, label, size=_TICK_SIZE, align="right", valign="center"),
            )
        p.text(self.x + self.w / 2, self.y - 30, xlabel, size=_LABEL_SIZE, align="center")
        p.text(
            self.x - _TICK_LEN - 10 - widest,
            self.y + self.h / 2,
            ylabel,
            size=_LABEL_SIZE,
            align="center",
            angle=90,
        )

    def vline(self, x: float, colour: Colour, dash: Sequence[float] | None = (4.0, 3.0)) -> None:
        if math.isfinite(x) and self.xlim[0] <= x <= self.xlim[1]:
            X = float(self.px(x))
            self.page.line(X, self.y, X, self.y + self.h, colour=colour, width=1.2, dash=dash)

    def hline(self, y: float, colour: Colour, dash: Sequence[float] | None = (4.0, 3.0)) -> None:
        Y = float(self.py(y))
        if math.isfinite(Y) and self.y <= Y <= self.y + self.h:
            self.page.line(self.x, Y, self.x + self.w, Y, colour=colour, width=1.2, dash=dash)

    def legend(
        self,
        entries: Sequence[tuple[str, Colour, str]],
        points: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Legend box in the corner of the axes that covers the fewest of ``points`` (page coordinates).

        ``entries``: (label, colour, style) with style 'line', 'dashed', 'marker' or 'patch'.
        """
        if not entries:
            return
        p = self.page
        size, row, sample, pad = _TICK_SIZE, 11.0, 18.0, 5.0
        w = pad * 3 + sample + max(text_width(label, size) for label, _, _ in entries)
        h = pad * 2 + row * len(entries) - 3.0
        inset = 6.0
        corners = [  # lower-left corner of the box: upper right first, so ties go there
            (self.x + self.w - inset - w, self.y + self.h - inset - h),
            (self.x + inset, self.y + self.h - inset - h),
            (self.x + self.w - inset - w, self.y + inset),
            (self.x + inset, self.y + inset),
        ]
        bx, by = corners[0]
        if points is not None and len(points[0]):
            qx, qy = (np.asarray(v, dtype=float) for v in points)
            counts = [
                int(np.sum((qx >= cx) & (qx <= cx + w) & (qy >= cy) & (qy <= cy + h))) for cx, cy in corners
            ]
            bx, by = corners[int(np.argmin(counts))]
        p.rect(bx, by, w, h, stroke="lightgray", fill="white", width=0.6)
        for i, (label, colour, style) in enumerate(entries):
            cy = by + h - pad - 3.0 - i * row
            sx = bx + pad
            if style == "marker":
                p.circle(sx + sample / 2, cy, 2.5, stroke=None, fill=colour)
            elif style == "patch":
                p.rect(sx + 3, cy - 3.5, sample - 6, 7, stroke=None, fill=colour)
            else:
                dash = (4.0, 2.0) if style == "dashed" else None
                p.line(sx, cy, sx + sample, cy, colour=colour, width=1.5, dash=dash)
            p.text(sx + sample + pad, cy, label, size=size, valign="center")


def _plot_box(page: Page) -> tuple[float, float, float, float]:
    """The axes rectangle on a WIDE page: room for tick labels, axis labels and the title."""
    left, bottom, right, top = 64.0, 46.0, 16.0, 34.0
    return left, bottom, page.width - left - right, page.height - bottom - top


def _same_length(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    n = min(x.size, y.size)
    return x[:n], y[:n]


def _data_limits(
    values: list[np.ndarray], given: tuple[float, float] | None, frac: float, log: bool = False
) -> tuple[float, float]:
    """``given`` if usable (increasing, positive on a log axis), else the range of ``values`` padded."""
    if given is not None:
        lo, hi = float(given[0]), float(given[1])
        if math.isfinite(lo) and math.isfinite(hi) and hi > lo and (lo > 0 or not log):
            return lo, hi
    v = np.concatenate(values) if values else np.zeros(0)
    if v.size == 0:
        return (1.0, 10.0) if log else (0.0, 1.0)
    lo, hi = float(v.min()), float(v.max())
    if log:
        a, b = _pad(math.log10(lo), math.log10(hi), frac)
        return 10.0**a, 10.0**b
    return _pad(lo, hi, frac)


# -- figures --------------------------------------------------------------------------------------------


def picks_figure(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    diameter_px: float,
    title: str,
    truth_xy: np.ndarray | None = None,
) -> Page:
    """Micrograph (contrast-stretched, downsampled for display) with a circle of ``diameter_px`` per pick.

    ``x``, ``y`` are pixel coordinates of the full-size ``image`` (y down, as in coordinate files). Picks
    are drawn in yellow; ``truth_xy`` (``[n, 2]`` x, y), if given, in cyan and 1.15x larger so that both
    stay visible where they coincide.
    """
    disp, f = _display_image(image)
    page = Page(*SQUARE)
    _title(page, title)
    ny, nx = disp.shape
    bottom = 22.0  # room for the caption
    s, x0, y0 = _fit(nx, ny, _MARGIN, bottom, page.width - 2 * _MARGIN, page.height - bottom - 34.0)
    top = y0 + s * ny
    page.image(_gray8(disp), x0, y0, s * nx, s * ny)
    # one display pixel spans f original pixels; original pixel centres are at integers, so the image's
    # left/top edge is at -0.5 in original pixels
    scale = s / f
    r = 0.5 * max(float(diameter_px), 2.0 * f) * scale

    def page_xy(px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        px, py = np.asarray(px, dtype=float), np.asarray(py, dtype=float)
        return x0 + (px + 0.5) * scale, top - (py + 0.5) * scale  # y down in the micrograph, up on the page

    caption = []
    with page.clip(x0, y0, s * nx, s * ny):
        if truth_xy is not None:
            t = np.asarray(truth_xy, dtype=float).reshape(-1, 2)
            page.circles(*page_xy(t[:, 0], t[:, 1]), _TRUTH_SCALE * r, stroke=_TRUTH_COLOUR, width=_PICK_LINE)
            caption.append(f"cyan: {len(t)} true positions")
        xs, ys = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
        page.circles(*page_xy(xs, ys), r, stroke=_PICK_COLOUR, width=_PICK_LINE)
    caption.insert(0, f"yellow: {xs.size} picks, circle diameter {float(diameter_px):.0f} px")
    if f > 1:
        caption.append(f"shown binned {f}x")
    page.text(page.width / 2, y0 - 14.0, "; ".join(caption), size=_TICK_SIZE, align="center")
    return page


def histogram_figure(values: np.ndarray, title: str, xlabel: str, threshold: float | None = None) -> Page:
    """Histogram of ``values`` with an optional dashed vertical line (and legend entry) at ``threshold``."""
    vals = np.asarray(values, dtype=float).ravel()
    vals = vals[np.isfinite(vals)]
    page = Page(*WIDE)
    _title(page, f"{title} (n = {vals.size})")
    box = _plot_box(page)
    has_threshold = threshold is not None and math.isfinite(float(threshold))
    if vals.size:
        counts, edges = np.histogram(vals, bins=min(100, max(10, int(np.sqrt(vals.size)))))
        lo, hi = float(edges[0]), float(edges[-1])
        if has_threshold:
            lo, hi = min(lo, float(threshold)), max(hi, float(threshold))
        ax = _Axes(page, box, _pad(lo, hi, 0.03), (0.0, max(1.0, float(counts.max())) * 1.08))
        bx, by = ax.px(edges[:-1]), ax.py(np.zeros(counts.size))
        page.rects(bx, by, ax.px(edges[1:]) - bx, ax.py(counts) - by, fill="steelblue")
        # the legend must not hide bars: sample points over each bar's area
        right, top = ax.px(edges[1:]), ax.py(counts)
        fx, fy = np.meshgrid(np.linspace(0, 1, 4), np.linspace(0, 1, 8))
        ox = bx[:, None, None] + (right - bx)[:, None, None] * fx[None]
        oy = by[:, None, None] + (top - by)[:, None, None] * fy[None]
        obstacles = (ox.ravel(), oy.ravel())
    else:
        ax = _Axes(page, box, (0.0, 1.0), (0.0, 1.0))
        page.text(
            ax.x + ax.w / 2, ax.y + ax.h / 2, "no values", size=_LABEL_SIZE, align="center", valign="center"
        )
        obstacles = None
    if has_threshold:
        ax.vline(float(threshold), "red")
        ax.legend([(f"threshold {float(threshold):g}", "red", "dashed")], obstacles)
    ax.draw(xlabel, "count")
    return page


def curves_figure(
    series: Sequence[tuple[str, np.ndarray, np.ndarray]],
    title: str,
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    logy: bool = False,
) -> Page:
    """Line plot of ``series`` = [(label, x, y), ...] (loss curves, precision-recall curves), with a legend.

    Colours follow ``PALETTE`` in order. Non-finite points (and y <= 0 with ``logy``) break the line.
    The legend goes into the corner that hides the fewest points.
    """
    page = Page(*WIDE)
    _title(page, title)
    box = _plot_box(page)
    pairs = [_same_length(x, y) for _, x, y in series]
    valid = [np.isfinite(x) & np.isfinite(y) & ((y > 0) if logy else True) for x, y in pairs]
    xl = _data_limits([x[ok] for (x, _), ok in zip(pairs, valid)], xlim, 0.0)
    yl = _data_limits([y[ok] for (_, y), ok in zip(pairs, valid)], ylim, 0.05, log=logy)
    ax = _Axes(page, box, xl, yl, logy=logy)
    entries = []
    pts_x, pts_y = [], []  # page points along the curves, which the legend should not hide
    with ax.clip():
        for i, ((label, _, _), (x, y), ok) in enumerate(zip(series, pairs, valid)):
            colour = PALETTE[i % len(PALETTE)]
            X, Y = ax.px(x), ax.py(np.where(ok, y, 1.0))
            idx = np.flatnonzero(ok)
            for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if idx.size else []:
                if run.size == 1:
                    page.circle(X[run[0]], Y[run[0]], 1.5, stroke=None, fill=colour)
                else:
                    page.polyline(X[run], Y[run], colour=colour, width=1.5)
                sx, sy = _densify(X[run], Y[run])
                pts_x.append(sx)
                pts_y.append(sy)
            entries.append((str(label), colour, "line"))
    if not any(ok.any() for ok in valid):
        page.text(
            ax.x + ax.w / 2, ax.y + ax.h / 2, "no data", size=_LABEL_SIZE, align="center", valign="center"
        )
    ax.legend(entries, (np.concatenate(pts_x), np.concatenate(pts_y)) if pts_x else None)
    ax.draw(xlabel, ylabel)
    return page


def scatter_figure(
    x: np.ndarray,
    y: np.ndarray,
    title: str,
    xlabel: str,
    ylabel: str,
    groups: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    colours: Sequence[Colour] | None = None,
    hlines: float | Sequence[float] = (),
    vlines: float | Sequence[float] = (),
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
) -> Page:
    """Scatter plot of (x, y), points coloured by ``groups``, with optional dashed threshold lines.

    ``groups``: per point, an int group index or a bool (e.g. ``selected``). Group k is drawn in
    ``colours[k]`` (default: ``PALETTE``; for bool groups gray for False and blue for True) and named
    ``labels[k]`` in the legend (bool groups default to "not selected" / "selected"; no legend without
    labels). Higher groups are drawn on top. ``hlines`` / ``vlines``: y / x values of red dashed lines.
    """
    x, y = _same_length(x, y)
    n = x.size
    g = np.zeros(n, dtype=int)
    if groups is not None:
        garr = np.asarray(groups).ravel()[:n]
        if garr.dtype == bool:
            colours = colours if colours is not None else ("gray", PALETTE[0])
            labels = labels if labels is not None else ("not selected", "selected")
        g[: garr.size] = garr.astype(int)
    ok = np.isfinite(x) & np.isfinite(y)
    hl = [float(v) for v in np.atleast_1d(np.asarray(hlines, dtype=float))]
    vl = [float(v) for v in np.atleast_1d(np.asarray(vlines, dtype=float))]
    page = Page(*WIDE)
    _title(page, title)
    xs_for_limits = [x[ok], np.asarray([v for v in vl if math.isfinite(v)])]
    ys_for_limits = [y[ok], np.asarray([v for v in hl if math.isfinite(v)])]
    ax = _Axes(
        page,
        _plot_box(page),
        _data_limits(xs_for_limits, xlim, 0.05),
        _data_limits(ys_for_limits, ylim, 0.05),
    )
    entries = []
    X, Y = ax.px(x), ax.py(y)
    with ax.clip():
        for k in sorted(set(g[ok].tolist())):  # not np.unique: its first call costs ~20 ms of imports
            sel = ok & (g == k)
            colour = colours[k % len(colours)] if colours is not None else PALETTE[k % len(PALETTE)]
            page.circles(X[sel], Y[sel], 2.2, stroke=None, fill=colour)
            if labels is not None and 0 <= k < len(labels):
                entries.append((f"{labels[k]} ({int(sel.sum())})", colour, "marker"))
        for v in hl:
            ax.hline(v, "red")
        for v in vl:
            ax.vline(v, "red")
    if not ok.any():
        page.text(
            ax.x + ax.w / 2, ax.y + ax.h / 2, "no data", size=_LABEL_SIZE, align="center", valign="center"
        )
    ax.legend(entries, (X[ok], Y[ok]))
    ax.draw(xlabel, ylabel)
    return page


def image_figure(
    image: np.ndarray,
    title: str,
    cmap: str = "gray",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
    label: str = "",
) -> Page:
    """An image (score map, micrograph) in 'gray' or 'viridis', row 0 at the top, with a colour bar.

    Block-averaged to <= MAX_DISPLAY_PX; the colour range is [vmin, vmax], by default the 0.5-99.5
    percentiles. ``label`` names the colour bar's quantity.
    """
    img, f = _block_average(image, MAX_DISPLAY_PX)
    lo, hi = _limits(img, vmin, vmax)
    table = _colour_table(cmap)
    idx = np.clip(np.nan_to_num((img - lo) / (hi - lo), nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    page = Page(*SQUARE)
    _title(page, title if f == 1 else f"{title} (binned {f}x)")
    ny, nx = img.shape
    bar_room = 80.0 if colorbar else 0.0
    s, x0, y0 = _fit(
        nx, ny, _MARGIN, _MARGIN, page.width - 2 * _MARGIN - bar_room, page.height - _MARGIN - 34.0
    )
    page.image(table[idx] if cmap not in ("gray", "grey") else idx, x0, y0, s * nx, s * ny)
    if colorbar:
        bx, bw, bh = x0 + s * nx + 14.0, 12.0, s * ny
        page.image(table[::-1, None, :], bx, y0, bw, bh)  # top row = high values
        page.rect(bx, y0, bw, bh, stroke="black", width=0.6)
        ticks = nice_ticks(lo, hi)
        for t, text in zip(ticks, _tick_labels(ticks)):
            ty = y0 + (t - lo) / (hi - lo) * bh
            page.line(bx + bw, ty, bx + bw + 3, ty, width=0.6)
            page.text(bx + bw + 5, ty, text, size=_TICK_SIZE, valign="center")
        if label:
            page.text(bx + bw + 60, y0 + bh / 2, label, size=_LABEL_SIZE, align="center", angle=90)
    return page


def gallery_figure(
    images: Sequence[np.ndarray],
    captions: Sequence[str] | None,
    title: str,
    marked: Sequence[bool] | Sequence[int] | np.ndarray | None = None,
    ncols: int = 8,
    mark_label: str = "selected",
) -> list[Page]:
    """Grid of small images (2D class averages) with a caption under each; returns a **list** of pages.

    Images that do not fit on one page continue on further pages (titles get "(page i/n)"), so the caller
    writes ``figures.extend(gallery_figure(...))``. Each image is contrast-stretched on its own
    (0.5-99.5 percentiles). ``marked``: a bool per image, or the indices of the marked ones; marked
    images get a green frame (explained at the top right as ``mark_label``).
    """
    n = len(images)
    if marked is None:
        mark = np.zeros(n, dtype=bool)
    else:
        m = np.asarray(marked)
        if m.dtype == bool:
            mark = np.zeros(n, dtype=bool)
            mark[: min(n, m.size)] = m.ravel()[:n]
        else:
            mark = np.zeros(n, dtype=bool)
            m = m.astype(int).ravel()
            mark[m[(m >= 0) & (m < n)]] = True
    ncols = max(1, int(ncols))
    width, height = SQUARE
    gap, cap = 4.0, 6.5
    tile = (width - 2 * _MARGIN - (ncols - 1) * gap) / ncols
    row_h = tile + cap + 6.0
    top = height - 34.0
    rows_per_page = max(1, int((top - _MARGIN) // row_h))
    per_page = rows_per_page * ncols
    npages = max(1, math.ceil(n / per_page))
    pages = []
    for pi in range(npages):
        page = Page(width, height)
        _title(page, title if npages == 1 else f"{title} (page {pi + 1}/{npages})")
        if mark.any():
            page.rect(width - _MARGIN - 8, height - 16, 7, 7, stroke=_MARK_COLOUR, width=1.5)
            page.text(width - _MARGIN - 11, height - 16, mark_label, size=_TICK_SIZE, align="right")
        if n == 0:
            page.text(width / 2, height / 2, "no images", size=_LABEL_SIZE, align="center", valign="center")
        for j in range(pi * per_page, min(n, (pi + 1) * per_page)):
            r, c = divmod(j - pi * per_page, ncols)
            tx = _MARGIN + c * (tile + gap)
            ty = top - (r + 1) * row_h + cap + 6.0  # tile's lower edge
            img = np.asarray(images[j])
            if img.ndim != 2 or img.size == 0:
                continue
            img, _ = _block_average(img, MAX_TILE_PX)
            if np.isfinite(img).any():
                lo, hi = _limits(img)
                img = (img - lo) / (hi - lo)
            ny, nx = img.shape
            s, ix, iy = _fit(nx, ny, tx, ty, tile, tile)
            page.image(_gray8(img), ix, iy, s * nx, s * ny)
            if mark[j]:
                page.rect(ix - 1.0, iy - 1.0, s * nx + 2.0, s * ny + 2.0, stroke=_MARK_COLOUR, width=2.0)
            if captions is not None and j < len(captions):
                page.text(
                    tx + tile / 2,
                    ty - 3.0,
                    _truncate(str(captions[j]), cap, 0.95 * tile),
                    size=cap,
                    align="center",
                    valign="top",
                )
        pages.append(page)
    return pages


def _densify(x: np.ndarray, y: np.ndarray, step: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``step`` points along a polyline (page coordinates), for legend placement."""
    if x.size < 2:
        return x, y
    d = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    t = np.linspace(0.0, d[-1], max(2, int(d[-1] / step) + 1))
    return np.interp(t, d, x), np.interp(t, d, y)


def _truncate(text: str, size: float, width: float) -> str:
    """``text`` shortened (ending in '..') to fit ``width`` points."""
    if text_width(text, size) <= width:
        return text
    while text and text_width(text + "..", size) > width:
        text = text[:-1]
    return text + ".."


def write_pdf(path: str | os.PathLike, figures: Sequence[Page | Sequence[Page]]) -> None:
    """Write ``figures`` (pages, or lists of pages as from ``gallery_figure``) as one PDF, atomically."""
    pages: list[Page] = []
    for fig in figures:
        if isinstance(fig, Page):
            pages.append(fig)
        else:
            pages.extend(fig)
    _write_pages(path, pages)


__all__ = [
    "MAX_DISPLAY_PX",
    "PALETTE",
    "Page",
    "curves_figure",
    "gallery_figure",
    "histogram_figure",
    "image_figure",
    "nice_ticks",
    "picks_figure",
    "rgb",
    "scatter_figure",
    "write_pdf",
]


# -- loop history (rp-loop-report) ----------------------------------------------------------------------

HISTORY_PAGE = (540.0, 720.0)  # portrait: stacked panels over a table


class _IterationAxes(_Axes):
    """Axes whose x values are loop iterations: whole-number x ticks only (nice_ticks would give 0.5)."""

    def draw(self, xlabel: str, ylabel: str) -> None:
        p = self.page
        p.rect(self.x, self.y, self.w, self.h, stroke="black", width=0.8)
        first, last = math.ceil(self.xlim[0]), math.floor(self.xlim[1])
        step = max(1, math.ceil((last - first + 1) / 12))
        xt = np.arange(first, last + 1, step, dtype=float)
        for t, value in zip(self.px(xt), xt):
            p.line(t, self.y, t, self.y - _TICK_LEN, width=0.8)
            p.text(t, self.y - _TICK_LEN - 2, f"{int(value)}", size=_TICK_SIZE, align="center", valign="top")
        yt = nice_ticks(*self.ylim, n=4)
        widest = 0.0
        for t, label in zip(self.py(yt), _tick_labels(yt)):
            p.line(self.x, t, self.x - _TICK_LEN, t, width=0.8)
            widest = max(
                widest,
                p.text(self.x - _TICK_LEN - 2, t, label, size=_TICK_SIZE, align="right", valign="center"),
            )
        if xlabel:
            p.text(self.x + self.w / 2, self.y - 24, xlabel, size=_LABEL_SIZE, align="center")
        p.text(
            self.x - _TICK_LEN - 10 - widest,
            self.y + self.h / 2,
            ylabel,
            size=_LABEL_SIZE,
            align="center",
            angle=90,
        )


def _history_panel(
    page: Page,
    box: tuple[float, float, float, float],
    x: np.ndarray,
    ylabel: str,
    series: Sequence[tuple[str, np.ndarray, str]],
    ylim: tuple[float, float] | None,
    xlabel: str,
) -> None:
    """One panel of ``history_figure``: grouped bars and lines (with a marker per point) against x."""
    vals = [np.asarray(v, dtype=float).ravel()[: x.size] for _, v, _ in series]
    finite = [v[np.isfinite(v)] for v in vals]
    has_bars = any(style == "bar" for _, _, style in series)
    xl = (float(x.min()) - 0.5, float(x.max()) + 0.5) if x.size else (-0.5, 0.5)
    if has_bars:  # bars stand on zero
        top = max([float(f.max()) for f in finite if f.size] + [0.0])
        yl = _data_limits([], ylim, 0.0) if ylim is not None else (0.0, max(top, 1.0) * 1.12)
    else:
        yl = _data_limits(finite, ylim, 0.08)
    ax = _IterationAxes(page, box, xl, yl)
    bars = [i for i, (_, _, style) in enumerate(series) if style == "bar"]
    width = 0.8 / max(1, len(bars))
    entries = []
    pts_x, pts_y = [], []
    with ax.clip():
        for i, ((label, _, style), v) in enumerate(zip(series, vals)):
            colour = PALETTE[i % len(PALETTE)]
            ok = np.isfinite(v)
            if style == "bar":
                k = bars.index(i)
                left = x[ok] - 0.4 + k * width
                bx, by = ax.px(left), ax.py(np.zeros(int(ok.sum())))
                page.rects(bx, by, ax.px(left + width) - bx, ax.py(v[ok]) - by, fill=colour)
                pts_x.append(np.concatenate([bx, ax.px(left + width)]))
                pts_y.append(np.concatenate([ax.py(v[ok]), ax.py(v[ok])]))
                entries.append((label, colour, "patch"))
            else:
                X, Y = ax.px(x[ok]), ax.py(v[ok])
                if X.size > 1:
                    page.polyline(X, Y, colour=colour, width=1.5)
                page.circles(X, Y, 2.2, stroke=None, fill=colour)
                sx, sy = _densify(X, Y)
                pts_x.append(sx)
                pts_y.append(sy)
                entries.append((label, colour, "line"))
    if not any(f.size for f in finite):
        page.text(
            ax.x + ax.w / 2, ax.y + ax.h / 2, "no data", size=_LABEL_SIZE, align="center", valign="center"
        )
    ax.legend(entries, (np.concatenate(pts_x), np.concatenate(pts_y)) if pts_x else None)
    ax.draw(xlabel, ylabel)


def _table_layout(header: Sequence[str], rows: Sequence[Sequence[str]], room: float):
    """Font size, column widths and right-alignment (numeric columns) of a text table ``room`` pt wide."""
    ncol = len(header)
    size, gap = 7.0, 6.0
    while True:
        widths = [
            max([text_width(str(header[j]), size, bold=True)] + [text_width(str(r[j]), size) for r in rows])
            for j in range(ncol)
        ]
        if sum(widths) + gap * (ncol - 1) <= room or size <= 4.0:
            break
        size -= 0.25
    right = []
    for j in range(ncol):
        cells = [str(r[j]) for r in rows if str(r[j]) not in ("", "-")]
        try:
            [float(c.rstrip("%")) for c in cells]
            right.append(bool(cells))
        except ValueError:
            right.append(False)
    return size, gap, widths, right


def _draw_table(page: Page, header, rows, layout, top: float) -> None:
    size, gap, widths, right = layout
    line_h = size * 1.45
    x = _MARGIN
    lefts = []
    for w in widths:
        lefts.append(x)
        x += w + gap
    for j, h in enumerate(header):
        ax = lefts[j] + (widths[j] if right[j] else 0.0)
        page.text(ax, top, str(h), size=size, bold=True, align="right" if right[j] else "left")
    page.line(_MARGIN, top - 0.35 * size, x - gap, top - 0.35 * size, width=0.5)
    for i, row in enumerate(rows):
        y = top - (i + 1) * line_h - 0.2 * size
        for j, cell in enumerate(row):
            ax = lefts[j] + (widths[j] if right[j] else 0.0)
            page.text(ax, y, str(cell), size=size, align="right" if right[j] else "left")


def history_figure(
    x: np.ndarray,
    panels: Sequence[tuple[str, Sequence[tuple[str, np.ndarray, str]], tuple[float, float] | None]],
    title: str,
    header: Sequence[str] = (),
    rows: Sequence[Sequence[str]] = (),
    xlabel: str = "iteration",
) -> list[Page]:
    """A per-iteration history: stacked panels sharing the x axis, then a text table; returns a **list**.

    ``panels``: ``(ylabel, series, ylim)`` from top to bottom, ``series`` = [(label, values, style), ...]
    with style ``"bar"`` (grouped bars from zero) or ``"line"`` (a marker per point; NaN leaves a gap),
    ``ylim`` None for the data's range. ``header`` / ``rows``: the table (text cells; numeric columns are
    right-aligned), under the panels on the first page and continued on further pages when it is long.
    """
    x = np.asarray(x, dtype=float).ravel()
    width, height = HISTORY_PAGE
    page = Page(width, height)
    _title(page, title)
    room = width - 2 * _MARGIN
    layout = _table_layout(header, rows, room) if len(header) else None
    line_h = layout[0] * 1.45 if layout else 0.0
    table_h = min(0.4 * height, (len(rows) + 1.5) * line_h) if layout else 0.0
    top = height - 34.0
    bottom = _MARGIN + table_h + (30.0 if layout else 0.0)
    n = max(1, len(panels))
    gap = 14.0  # between panels: the x tick labels of the one above
    panel_h = (top - bottom - 24.0 - gap * (n - 1)) / n  # 24: the x label under the last panel
    for k, (ylabel, series, ylim) in enumerate(panels):
        y0 = top - (k + 1) * panel_h - k * gap
        box = (64.0, y0, width - 64.0 - 16.0, panel_h)
        _history_panel(page, box, x, ylabel, series, ylim, xlabel if k == n - 1 else "")
    pages = [page]
    if layout is None:
        return pages
    first = max(0, int(table_h / line_h) - 1)
    _draw_table(page, header, rows[:first], layout, _MARGIN + table_h - layout[0])
    per_page = max(1, int((height - 34.0 - 2 * _MARGIN) / line_h) - 1)
    rest = list(rows[first:])
    while rest:
        more = Page(width, height)
        _title(more, f"{title} (table continued)")
        _draw_table(more, header, rest[:per_page], layout, height - 34.0 - layout[0])
        rest = rest[per_page:]
        pages.append(more)
    return pages


__all__ += ["history_figure"]
