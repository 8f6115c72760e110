"""logfile.pdf figures: our PDF writer produces structurally valid files, and the pages show what they should.

The structure is checked by parsing the file (xref offsets, page tree); the pixels by rendering with
poppler's ``pdftoppm`` where it is installed (otherwise only those checks are skipped).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import zlib

import numpy as np
import pytest

from relion_plugins.plots.figures import (
    _display_image,
    _percentiles,
    curves_figure,
    gallery_figure,
    histogram_figure,
    image_figure,
    nice_ticks,
    picks_figure,
    scatter_figure,
    write_pdf,
)
from relion_plugins.plots.pdf import Page, pdf_bytes, text_width

PDFTOPPM = shutil.which("pdftoppm")


def check_structure(data: bytes) -> list[bytes]:
    """Assert header, trailer and xref are consistent; return the page objects' dictionaries."""
    assert data.startswith(b"%PDF-1.4\n%")
    assert data.rstrip().endswith(b"%%EOF")
    startxref = int(re.search(rb"startxref\s+(\d+)\s+%%EOF\s*$", data).group(1))
    assert data[startxref:].startswith(b"xref\n")
    head = re.match(rb"xref\n0 (\d+)\n", data[startxref:])
    size = int(head.group(1))
    table = data[startxref + head.end() : startxref + head.end() + 20 * size]
    entries = [table[20 * i : 20 * (i + 1)] for i in range(size)]
    assert entries[0] == b"0000000000 65535 f \n"
    objects = {}
    for i, entry in enumerate(entries[1:], start=1):
        assert re.fullmatch(rb"\d{10} 00000 n \n", entry), entry
        offset = int(entry[:10])
        assert data[offset:].startswith(b"%d 0 obj\n" % i), (i, data[offset : offset + 20])
        objects[i] = data[offset + len(b"%d 0 obj\n" % i) :]
    trailer = data[startxref + head.end() + 20 * size :]
    assert trailer.startswith(b"trailer\n")
    assert int(re.search(rb"/Size (\d+)", trailer).group(1)) == size
    root = int(re.search(rb"/Root (\d+) 0 R", trailer).group(1))
    pages_id = int(re.search(rb"/Pages (\d+) 0 R", objects[root]).group(1))
    count = int(re.search(rb"/Count (\d+)", objects[pages_id]).group(1))
    kids = [int(k) for k in re.findall(rb"(\d+) 0 R", objects[pages_id].split(b"]")[0])]
    assert len(kids) == count
    pages = [objects[k] for k in kids]
    assert all(p.startswith(b"<< /Type /Page ") for p in pages)
    return pages


def render(pdf, tmp_path, page: int = 1, dpi: int = 72) -> np.ndarray:
    """Page ``page`` rendered by pdftoppm as an [h, w, 3] uint8 array (PPM output: no image library)."""
    prefix = tmp_path / f"render{page}"
    proc = subprocess.run(
        [PDFTOPPM, "-r", str(dpi), "-f", str(page), "-l", str(page), "-singlefile", str(pdf), str(prefix)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stderr == "", proc.stderr  # poppler reports any syntax error here
    raw = (tmp_path / f"render{page}.ppm").read_bytes()
    magic, w, h, maxval = raw.split(maxsplit=4)[:4]
    assert magic == b"P6" and maxval == b"255"
    w, h = int(w), int(h)
    return np.frombuffer(raw[len(raw) - 3 * w * h :], dtype=np.uint8).reshape(h, w, 3)


def all_figures(rng: np.random.Generator) -> list:
    image = rng.normal(size=(1500, 1200)).astype(np.float32)  # > 1024: exercises display binning
    xy = rng.uniform(50, 1100, size=(30, 2))
    steps = np.arange(50)
    return [
        histogram_figure(rng.normal(size=500), "fom", "rlnAutopickFigureOfMerit", threshold=0.5),
        histogram_figure(np.zeros(0), "empty", "x"),
        picks_figure(image, xy[:, 0], xy[:, 1], 40.0, "picks (a) \\ \u00c5 \u2603", truth_xy=xy + 3.0),
        picks_figure(image, np.zeros(0), np.zeros(0), 40.0, "no picks"),
        curves_figure(
            [("train", steps, np.exp(-steps / 10) + 0.01), ("valid", steps, np.exp(-steps / 12) + 0.02)],
            "loss",
            "epoch",
            "loss",
            logy=True,
        ),
        curves_figure([], "nothing", "recall", "precision", xlim=(0, 1), ylim=(0, 1)),
        scatter_figure(
            rng.uniform(size=50),
            rng.uniform(5, 30, size=50),
            "classes",
            "score",
            "resolution (\u00c5)",
            groups=rng.uniform(size=50) > 0.5,
            hlines=12.0,
            vlines=[0.5],
        ),
        image_figure(rng.normal(size=(200, 300)), "score map", cmap="viridis", label="score"),
        gallery_figure(
            [rng.normal(size=(32, 32)) for _ in range(70)], None, "classes", marked=[0, 3], ncols=8
        ),
    ]


def test_pdf_written(tmp_path):
    figs = all_figures(np.random.default_rng(0))
    n_pages = len(figs) - 1 + len(figs[-1])
    assert len(figs[-1]) == 2  # 70 images of 8 per row do not fit on one page
    out = tmp_path / "sub" / "logfile.pdf"
    write_pdf(out, figs)
    data = out.read_bytes()
    assert len(check_structure(data)) == n_pages
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".rp_tmp_")]
    if PDFTOPPM:
        # poppler renders every page without complaint (it reports syntax errors on stderr)
        proc = subprocess.run(
            [PDFTOPPM, "-r", "10", str(out), str(tmp_path / "all")],
            capture_output=True,
            text=True,
            check=True,
        )
        assert proc.stderr == ""
        assert len(list(tmp_path.glob("all-*.ppm"))) == n_pages


def test_empty_and_page_sizes():
    data = pdf_bytes([Page(540, 360), Page()])
    pages = check_structure(data)
    assert b"/MediaBox [0 0 540.00 360.00]" in pages[0]
    assert b"/MediaBox [0 0 540.00 540.00]" in pages[1]
    assert len(check_structure(pdf_bytes([]))) == 1  # an empty list still gives a valid file


def test_many_circles_are_one_path():
    page = Page()
    rng = np.random.default_rng(1)
    cx, cy = rng.uniform(0, 540, 2000), rng.uniform(0, 540, 2000)
    page.circles(cx, cy, 5.0, stroke="yellow", width=0.8)
    lines = page.content().decode().splitlines()
    assert sum(line.endswith(" c") for line in lines) == 4 * 2000
    assert sum(line.endswith(" m") for line in lines) == 2000
    assert sum(line == "h" for line in lines) == 2000
    assert lines.count("S") == 1  # one stroke for all of them
    assert "1.000 1.000 0.000 RG" in lines
    # the first circle starts at (cx + r, cy) and its curves end on the circle (in 1/100 pt, scaled by cm)
    assert "q 0.01 0 0 0.01 0 0 cm" in lines and "80.0 w [] 0 d" in lines
    first = lines.index(next(line for line in lines if line.endswith(" m")))
    assert lines[first] == f"{round((cx[0] + 5) * 100)} {round(cy[0] * 100)} m"
    end = [float(v) / 100 for v in lines[first + 1].split()[4:6]]
    assert end == pytest.approx([cx[0], cy[0] + 5], abs=0.01)
    # non-finite and zero-radius circles are dropped, not written as nan
    page2 = Page()
    page2.circles([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], [1.0, 1.0, 0.0])
    assert page2.content().count(b" m\n") == 1 and b"nan" not in page2.content()


def test_text_escaping_widths_alignment():
    page = Page()
    width = page.text(100, 50, "a(b)c\\d", size=10, align="right")
    content = page.content()
    assert b"(a\\(b\\)c\\\\d) Tj" in content
    assert width == pytest.approx(text_width("a(b)c\\d", 10))
    # right-aligned: the text starts one width left of the anchor
    tm = re.search(rb"Tm", content)
    x = float(content[: tm.start()].split()[-2])
    assert x == pytest.approx(100 - width, abs=0.01)
    assert text_width("Hello", 10) == pytest.approx((722 + 556 + 222 + 222 + 556) / 100)
    assert text_width("Hello", 10, bold=True) > text_width("Hello", 10)
    page.text(0, 0, "resolution (\u00c5) \u2603\u00e9\n", angle=90)  # must not raise
    content = page.content()
    assert b"(resolution \\(\\305\\) ???) Tj" in content
    assert b"0.0000 1.0000 -1.0000 0.0000" in content  # rotated 90 degrees
    assert content.isascii()


def test_image_stream():
    page = Page()
    smooth = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    page.image(smooth, 0, 0, 100, 100)
    page.image(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8), 0, 0, 10, 10)
    data = pdf_bytes([page])
    assert data.count(b"/Interpolate false") == 2
    assert b"/ColorSpace /DeviceGray" in data and b"/ColorSpace /DeviceRGB" in data
    # the smooth image is deflated and decodes to the same bytes; the noise image is stored raw
    m = re.search(rb"/DeviceGray /Interpolate false /Filter /FlateDecode /Length (\d+) >>\nstream\n", data)
    assert zlib.decompress(data[m.end() : m.end() + int(m.group(1))]) == smooth.tobytes()
    assert re.search(rb"/DeviceRGB /Interpolate false /Length 12288 >>", data)


def test_nice_ticks():
    assert nice_ticks(0, 1).tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(-3.7, 3.8).tolist() == [-3, -2, -1, 0, 1, 2, 3]
    assert nice_ticks(0, 171).tolist() == [0, 50, 100, 150]
    assert nice_ticks(2, 2).tolist() == [2]
    assert nice_ticks(0, math.inf).size == 0


def test_display_image_bins_and_stretches():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(1500, 1200))
    img, f = _display_image(image)
    assert f == 2 and img.shape == (750, 600)
    binned = image.reshape(750, 2, 600, 2).mean(axis=(1, 3))
    lo, hi = np.percentile(binned, [0.5, 99.5])  # the display range is estimated from a subsample
    assert np.abs(img - np.clip((binned - lo) / (hi - lo), 0, 1)).max() < 0.02
    assert img.min() == 0.0 and img.max() == 1.0
    assert (img == 0).mean() == pytest.approx(0.005, abs=0.002)  # 0.5 % of the pixels at or below black
    a = rng.normal(size=1001)
    assert _percentiles(a, (0.5, 99.5)) == pytest.approx(np.percentile(a, [0.5, 99.5]))


@pytest.mark.skipif(PDFTOPPM is None, reason="pdftoppm (poppler-utils) not installed")
def test_picks_rendered_where_they_are(tmp_path):
    # Top three quarters black, bottom quarter white: shows where row 0 ends up and that the image is drawn
    nx, ny = 400, 300
    image = np.zeros((ny, nx), dtype=np.float32)
    image[225:] = 1.0
    picks = np.array([[100.0, 60.0], [300.0, 150.0]])
    diameter = 60.0
    out = tmp_path / "picks.pdf"
    write_pdf(out, [picks_figure(image, picks[:, 0], picks[:, 1], diameter, "picks", truth_xy=picks[:1])])
    rgb = render(out, tmp_path, dpi=72).astype(int)

    dark = rgb.max(axis=2) < 40
    rows = np.flatnonzero(dark.sum(axis=1) > 0.5 * dark.sum(axis=1).max())  # text rows have few dark pixels
    cols = np.flatnonzero(dark[rows].sum(axis=0) > 0.5 * rows.size)
    x0, y0 = cols[0], rows[0]
    scale = (cols[-1] + 1 - x0) / nx  # pixels of the rendering per micrograph pixel
    assert (rows[-1] + 1 - y0) == pytest.approx(225 * scale, abs=3)  # the black part is at the top
    white = rgb[int(y0 + 270 * scale), int(x0 + 200 * scale)]
    assert white.min() > 215  # ... and the white quarter under it: the image is not blank

    def colour_on_ring(cx, cy, radius, test) -> int:
        hits = 0
        for a in np.linspace(0, 2 * np.pi, 16, endpoint=False):
            window = [
                rgb[int(cy + rr * np.sin(a)), int(cx + rr * np.cos(a))]  # pixel i spans [i, i + 1)
                for rr in np.arange(radius - 2, radius + 2.5, 0.5)
            ]
            hits += any(test(p) for p in window)
        return hits

    # on the black background an anti-aliased 0.8 pt line is a dimmer shade of its colour (down to ~60)
    def yellow(p):
        return min(p[0], p[1]) > 40 and p[2] < 0.5 * min(p[0], p[1])

    def cyan(p):
        return min(p[1], p[2]) > 40 and p[0] < 0.5 * min(p[1], p[2])

    for x, y in picks:
        cx, cy = x0 + (x + 0.5) * scale, y0 + (y + 0.5) * scale
        r = 0.5 * diameter * scale
        assert colour_on_ring(cx, cy, r, yellow) == 16
        assert not yellow(rgb[int(cy), int(cx)])  # a ring, not a disc
        assert rgb[int(cy), int(cx)].max() < 40
    cx, cy = x0 + (picks[0, 0] + 0.5) * scale, y0 + (picks[0, 1] + 0.5) * scale
    assert colour_on_ring(cx, cy, 1.15 * 0.5 * diameter * scale, cyan) == 16
    assert (
        colour_on_ring(x0 + (picks[1, 0] + 0.5) * scale, y0 + (picks[1, 1] + 0.5) * scale, 34.5 * scale, cyan)
        == 0
    )
