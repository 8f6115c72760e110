"""Figures for ``logfile.pdf``: picks drawn on a micrograph, histograms, and a multi-page PDF writer.

matplotlib is imported inside the functions so that importing this module is free. Figures are built as
bare ``matplotlib.figure.Figure`` objects rendered by the PDF (Agg-like) backend, never through pyplot, so no
display is needed and jobs running in threads share no global state.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np

MAX_DISPLAY_PX = 1024


def _figure():
    # A Figure object not registered with pyplot: no global state and no GUI backend is ever selected
    from matplotlib.figure import Figure

    return Figure(figsize=(7.5, 7.5), dpi=100)


def _display_image(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Block-average to <= MAX_DISPLAY_PX and contrast-stretch (0.5-99.5 percentiles); returns (img, bin)."""
    img = np.asarray(image, dtype=np.float32)
    f = max(1, int(np.ceil(max(img.shape) / MAX_DISPLAY_PX)))
    if f > 1:
        ny, nx = (img.shape[0] // f) * f, (img.shape[1] // f) * f
        img = img[:ny, :nx].reshape(ny // f, f, nx // f, f).mean(axis=(1, 3))
    finite = img[np.isfinite(img)]
    if finite.size:
        lo, hi = np.percentile(finite, [0.5, 99.5])
        if hi <= lo:
            hi = lo + 1.0
        img = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    return img, f


def picks_figure(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    diameter_px: float,
    title: str,
    truth_xy: np.ndarray | None = None,
):
    """Micrograph (contrast-stretched, downsampled for display) with a circle of ``diameter_px`` per pick.

    Picks are drawn in yellow; ``truth_xy`` (``[n, 2]`` x, y), if given, in cyan and slightly larger so that
    both stay visible where they coincide.
    """
    from matplotlib.collections import EllipseCollection

    disp, f = _display_image(image)
    fig = _figure()
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.92))
    ax.imshow(disp, cmap="gray", origin="upper", interpolation="nearest", vmin=0.0, vmax=1.0)
    d = max(float(diameter_px) / f, 2.0)

    def circles(xy: np.ndarray, size: float, colour: str) -> None:
        if xy.size == 0:
            return
        ax.add_collection(
            EllipseCollection(
                size,
                size,
                0.0,
                units="xy",
                offsets=xy,
                offset_transform=ax.transData,
                facecolors="none",
                edgecolors=colour,
                linewidths=0.8,
            )
        )

    # divide by the display bin: coordinates are in original pixels, pixel centres at integers
    if truth_xy is not None:
        circles(np.asarray(truth_xy, dtype=float).reshape(-1, 2) / f, 1.15 * d, "cyan")
    circles(
        np.stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)], axis=1).reshape(-1, 2) / f,
        d,
        "yellow",
    )
    ax.set_xlim(-0.5, disp.shape[1] - 0.5)
    ax.set_ylim(disp.shape[0] - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    return fig


def histogram_figure(values: np.ndarray, title: str, xlabel: str, threshold: float | None = None):
    """Histogram of ``values`` with an optional vertical line at ``threshold``."""
    vals = np.asarray(values, dtype=float).ravel()
    vals = vals[np.isfinite(vals)]
    fig = _figure()
    fig.set_size_inches(7.5, 4.5)
    ax = fig.add_subplot(111)
    if vals.size:
        ax.hist(vals, bins=min(100, max(10, int(np.sqrt(vals.size)))), color="steelblue")
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(float(threshold), color="red", linestyle="--", label=f"threshold {threshold:g}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(f"{title} (n = {vals.size})", fontsize=10)
    fig.tight_layout()
    return fig


def write_pdf(path: str | os.PathLike, figures: Sequence) -> None:
    """Write ``figures`` as pages of one PDF, atomically (a reader never sees a partial file)."""
    from matplotlib.backends.backend_pdf import PdfPages

    from relion_plugins.relion.atomic import atomic_path

    with atomic_path(path) as tmp:
        with PdfPages(tmp) as pdf:
            for fig in figures:
                pdf.savefig(fig)
    for fig in figures:  # pyplot-created figures would otherwise stay alive in pyplot's registry
        _close(fig)


def _close(fig) -> None:
    # Our figures are plain Figure objects; only ones made through pyplot need unregistering.
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close(fig)
