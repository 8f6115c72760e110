"""logfile.pdf figures: a multi-page PDF is written atomically and is a valid PDF."""

from __future__ import annotations

import numpy as np

from relion_plugins.plots.figures import histogram_figure, picks_figure, write_pdf


def test_pdf_written(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1500, 1200)).astype(np.float32)  # > 1024: exercises display binning
    xy = rng.uniform(50, 1100, size=(30, 2))
    figs = [
        histogram_figure(rng.normal(size=500), "fom", "rlnAutopickFigureOfMerit", threshold=0.5),
        histogram_figure(np.zeros(0), "empty", "x"),
        picks_figure(image, xy[:, 0], xy[:, 1], 40.0, "picks", truth_xy=xy + 3.0),
        picks_figure(image, np.zeros(0), np.zeros(0), 40.0, "no picks"),
    ]
    out = tmp_path / "sub" / "logfile.pdf"
    write_pdf(out, figs)
    data = out.read_bytes()
    assert data.startswith(b"%PDF")
    assert b"%%EOF" in data[-64:]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".rp_tmp_")]
