"""A minimal PDF 1.4 writer (numpy + zlib): vector paths, Helvetica text and 8-bit images.

Just enough for ``logfile.pdf`` pages, and fast: a page of 2000 circles on a 1024 x 1024 micrograph is
written in milliseconds, where importing and rendering matplotlib costs about a second per job.

Coordinates are PDF user space: points (1/72 inch) from the bottom-left corner of the page, y up. Callers
that draw micrographs (row 0 at the top) flip y themselves (see ``figures.py``). Drawing state (colours,
line width, dash) is given per call; the page emits an operator only when the state changes.

Text uses the standard Helvetica fonts, which every PDF viewer has, so nothing is embedded. String widths
for alignment come from Helvetica's AFM metrics. Characters that WinAnsiEncoding cannot show (or that this
module has no width for) are drawn as ``?``.
"""

from __future__ import annotations

import contextlib
import math
import os
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

Colour = tuple[float, float, float] | str | float
"""RGB in [0, 1], ``"#rrggbb"``, one of ``NAMED_COLOURS``, or a gray level in [0, 1]."""

NAMED_COLOURS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "gray": (0.5, 0.5, 0.5),
    "lightgray": (0.83, 0.83, 0.83),
    "red": (0.84, 0.15, 0.16),
    "green": (0.17, 0.63, 0.17),
    "blue": (0.12, 0.47, 0.71),
    "orange": (1.0, 0.5, 0.05),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "steelblue": (70 / 255, 130 / 255, 180 / 255),
}

# Helvetica and Helvetica-Bold advance widths (1/1000 em) for codes 32..126 under WinAnsiEncoding
# (code 39 is quotesingle, 96 is grave), from Adobe's Core 14 AFM files.
_HELVETICA = (
    (278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278)
    + (556,) * 10
    + (278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556)
    + (833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556)
    + (333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, 556, 556, 333)
    + (500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584)
)
_HELVETICA_BOLD = (
    (278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278)
    + (556,) * 10
    + (333, 333, 584, 584, 584, 611, 975, 722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611)
    + (833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333, 278, 333, 584, 556)
    + (333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611, 611, 611, 389)
    + (556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584)
)
assert len(_HELVETICA) == len(_HELVETICA_BOLD) == 95

# The few non-ASCII characters worth showing in cryo-EM labels: char -> (WinAnsi code, width, bold width)
_EXTRA: dict[str, tuple[int, int, int]] = {
    "\u00c5": (0xC5, 667, 722),  # Å
    "\u212b": (0xC5, 667, 722),  # Angstrom sign, drawn as Å
    "\u00b0": (0xB0, 400, 400),  # °
    "\u00b5": (0xB5, 556, 611),  # micro sign
    "\u03bc": (0xB5, 556, 611),  # Greek mu, drawn as micro sign
    "\u00b1": (0xB1, 584, 584),  # ±
    "\u00d7": (0xD7, 584, 584),  # ×
    "\u00b2": (0xB2, 333, 333),  # ²
    "\u00b3": (0xB3, 333, 333),  # ³
    "\u00b7": (0xB7, 278, 278),  # middle dot
    "\u2013": (0x96, 556, 556),  # en dash
    "\u2014": (0x97, 1000, 1000),  # em dash
    "\u2022": (0x95, 350, 350),  # bullet
}
_QUESTION = ord("?")

# Anchor offsets: along the baseline in units of the string width; across it in units of the font size,
# from Helvetica's cap height (718/1000) and descender (207/1000)
_ALIGN = {"left": 0.0, "center": -0.5, "centre": -0.5, "right": -1.0}
_VALIGN = {"baseline": 0.0, "bottom": 0.207, "center": -0.359, "centre": -0.359, "top": -0.718}

_KAPPA = 0.5522847498  # Bezier control distance for a quarter circle of radius 1
# The 13 points (start + 4 curves x 3) of a unit circle, counter-clockwise from (1, 0)
_CIRCLE_X = np.array([1, 1, _KAPPA, 0, -_KAPPA, -1, -1, -1, -_KAPPA, 0, _KAPPA, 1, 1], dtype=float)
_CIRCLE_Y = np.array([0, _KAPPA, 1, 1, 1, _KAPPA, 0, -_KAPPA, -1, -1, -1, -_KAPPA, 0], dtype=float)
_CIRCLE_FMT = "%d %d m\n" + "%d %d %d %d %d %d c\n" * 4 + "h\n"
# Vectorised paths (circles, polylines, bars) are written in integer hundredths of a point under a 0.01
# scale: '%d' formatting is ~3x faster than '%.2f', and 1/100 pt is far below what anyone can see.
_HUNDREDTHS = 100.0

# zlib level 1: on our content (numbers) and images, higher levels cost 3-4x the time for ~15% smaller files
_ZLIB_LEVEL = 1
# Micrographs are mostly noise and deflate by only a few percent, at ~20 ms per 1024^2 image: an image whose
# sample compresses worse than this ratio is stored raw.
_MIN_GAIN_RATIO = 0.8
_SAMPLE_BYTES = 1 << 15


def rgb(colour: Colour) -> tuple[float, float, float]:
    """``colour`` as an (r, g, b) tuple in [0, 1]."""
    if isinstance(colour, str):
        if colour.startswith("#") and len(colour) == 7:
            return tuple(int(colour[i : i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]
        try:
            return NAMED_COLOURS[colour.lower()]
        except KeyError:
            raise ValueError(f"unknown colour {colour!r}") from None
    if isinstance(colour, (int, float, np.floating, np.integer)):
        g = float(colour)
        return (g, g, g)
    r, g, b = (float(c) for c in colour)
    return (r, g, b)


def _encode_text(text: str, bold: bool = False) -> tuple[bytes, float]:
    """WinAnsi bytes for ``text`` (unknown characters -> '?') and its width in 1/1000 em."""
    widths = _HELVETICA_BOLD if bold else _HELVETICA
    out = bytearray()
    total = 0
    for ch in str(text):
        o = ord(ch)
        if 32 <= o <= 126:
            out.append(o)
            total += widths[o - 32]
        elif ch in _EXTRA:
            code, w, wb = _EXTRA[ch]
            out.append(code)
            total += wb if bold else w
        else:
            out.append(_QUESTION)
            total += widths[_QUESTION - 32]
    return bytes(out), float(total)


def text_width(text: str, size: float, bold: bool = False) -> float:
    """Width in points of ``text`` set in Helvetica (or Helvetica-Bold) at ``size`` points."""
    return _encode_text(text, bold)[1] * size / 1000.0


def _pdf_string(data: bytes) -> str:
    """A PDF literal string ``(...)``; parentheses and backslashes escaped, non-ASCII bytes as octal."""
    parts = []
    for b in data:
        if b in (0x28, 0x29, 0x5C):  # ( ) \
            parts.append("\\" + chr(b))
        elif 32 <= b <= 126:
            parts.append(chr(b))
        else:
            parts.append(f"\\{b:03o}")
    return "(" + "".join(parts) + ")"


def _fmt(v: float) -> str:
    return f"{float(v):.2f}"


class Page:
    """One PDF page of ``width`` x ``height`` points; draw on it, then pass it to ``write_pdf``."""

    def __init__(self, width: float = 540.0, height: float = 540.0) -> None:
        self.width = float(width)
        self.height = float(height)
        self._ops: list[str] = ["1 j\n"]  # round joins: dense polylines get no miter spikes
        self._images: list[tuple[str, int, int, str, bytes]] = []  # name, nx, ny, dictionary entries, data
        self._state: dict[str, object] = self._initial_state()
        self._saved: list[dict[str, object]] = []

    @staticmethod
    def _initial_state() -> dict[str, object]:
        # PDF's initial graphics state: black stroke and fill, width 1, solid
        return {"RG": (0.0, 0.0, 0.0), "rg": (0.0, 0.0, 0.0), "w": 1.0, "d": ()}

    # -- graphics state --------------------------------------------------------------------------------

    def _set_stroke_colour(self, colour: Colour) -> None:
        c = rgb(colour)
        if self._state["RG"] != c:
            self._ops.append(f"{c[0]:.3f} {c[1]:.3f} {c[2]:.3f} RG\n")
            self._state["RG"] = c

    def _set_stroke(self, colour: Colour, width: float, dash: Sequence[float] | None) -> None:
        self._set_stroke_colour(colour)
        w = float(width)
        if self._state["w"] != w:
            self._ops.append(f"{w:.3f} w\n")
            self._state["w"] = w
        d = tuple(float(v) for v in dash) if dash else ()
        if self._state["d"] != d:
            self._ops.append("[" + " ".join(_fmt(v) for v in d) + "] 0 d\n")
            self._state["d"] = d

    def _set_fill(self, colour: Colour) -> None:
        c = rgb(colour)
        if self._state["rg"] != c:
            self._ops.append(f"{c[0]:.3f} {c[1]:.3f} {c[2]:.3f} rg\n")
            self._state["rg"] = c

    def _paint(
        self,
        path: str,
        stroke: Colour | None,
        fill: Colour | None,
        width: float,
        dash: Sequence[float] | None,
    ) -> None:
        if stroke is None and fill is None:
            return
        if stroke is not None:
            self._set_stroke(stroke, width, dash)
        if fill is not None:
            self._set_fill(fill)
        op = "B" if (stroke is not None and fill is not None) else ("S" if stroke is not None else "f")
        self._ops.append(path)
        self._ops.append(op + "\n")

    def _paint_hundredths(
        self,
        path: str,
        stroke: Colour | None,
        fill: Colour | None,
        width: float,
        dash: Sequence[float] | None,
    ) -> None:
        """Paint ``path`` given in hundredths of a point (see ``_HUNDREDTHS``)."""
        if stroke is None and fill is None:
            return
        # colours are set outside q/Q so that the state cache stays valid; width and dash are scaled
        # inside and restored by Q
        if stroke is not None:
            self._set_stroke_colour(stroke)
        if fill is not None:
            self._set_fill(fill)
        k = _HUNDREDTHS
        ops = [f"q {1 / k:.2f} 0 0 {1 / k:.2f} 0 0 cm\n"]
        if stroke is not None:
            d = " ".join(f"{k * float(v):.0f}" for v in dash) if dash else ""
            ops.append(f"{k * float(width):.1f} w [{d}] 0 d\n")
        op = "B" if (stroke is not None and fill is not None) else ("S" if stroke is not None else "f")
        ops += [path, op, "\nQ\n"]
        self._ops.extend(ops)

    @contextlib.contextmanager
    def clip(self, x: float, y: float, w: float, h: float) -> Iterator[Page]:
        """Within the block, drawing is clipped to the rectangle (x, y, w, h)."""
        self._ops.append(f"q\n{_fmt(x)} {_fmt(y)} {_fmt(w)} {_fmt(h)} re W n\n")
        self._saved.append(dict(self._state))
        try:
            yield self
        finally:
            self._ops.append("Q\n")
            self._state = self._saved.pop()

    # -- paths -----------------------------------------------------------------------------------------

    def line(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        *,
        colour: Colour = "black",
        width: float = 1.0,
        dash: Sequence[float] | None = None,
    ) -> None:
        """A straight line from (x0, y0) to (x1, y1)."""
        self._paint(f"{_fmt(x0)} {_fmt(y0)} m {_fmt(x1)} {_fmt(y1)} l\n", colour, None, width, dash)

    def polyline(
        self,
        x: Sequence[float] | np.ndarray,
        y: Sequence[float] | np.ndarray,
        *,
        colour: Colour | None = "black",
        fill: Colour | None = None,
        width: float = 1.0,
        dash: Sequence[float] | None = None,
        closed: bool = False,
    ) -> None:
        """Connected line segments through the points (x[i], y[i]); ``closed`` or ``fill`` closes it."""
        xy = np.stack([np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()], axis=1)
        xy = xy[np.isfinite(xy).all(axis=1)]
        if len(xy) < 2:
            return
        v = np.rint(xy * _HUNDREDTHS).astype(np.int64).ravel().tolist()
        path = ("%d %d m\n" + "%d %d l\n" * (len(xy) - 1)) % tuple(v)
        if closed or fill is not None:
            path += "h\n"
        self._paint_hundredths(path, colour, fill, width, dash)

    def rect(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        *,
        stroke: Colour | None = "black",
        fill: Colour | None = None,
        width: float = 1.0,
        dash: Sequence[float] | None = None,
    ) -> None:
        """Rectangle with lower-left corner (x, y), stroked and/or filled."""
        self._paint(f"{_fmt(x)} {_fmt(y)} {_fmt(w)} {_fmt(h)} re\n", stroke, fill, width, dash)

    def rects(
        self,
        x: np.ndarray,
        y: np.ndarray,
        w: np.ndarray | float,
        h: np.ndarray | float,
        *,
        stroke: Colour | None = None,
        fill: Colour | None = "black",
        width: float = 1.0,
    ) -> None:
        """Many rectangles as one path (histogram bars): arrays of lower-left corners, widths, heights."""
        x, y, w, h = np.broadcast_arrays(*(np.asarray(v, dtype=float).ravel() for v in (x, y, w, h)))
        if x.size == 0:
            return
        vals = np.rint(np.stack([x, y, w, h], axis=1) * _HUNDREDTHS).astype(np.int64).ravel().tolist()
        self._paint_hundredths(("%d %d %d %d re\n" * x.size) % tuple(vals), stroke, fill, width, None)

    def circles(
        self,
        cx: np.ndarray | Sequence[float] | float,
        cy: np.ndarray | Sequence[float] | float,
        r: np.ndarray | Sequence[float] | float,
        *,
        stroke: Colour | None = "black",
        fill: Colour | None = None,
        width: float = 1.0,
        dash: Sequence[float] | None = None,
    ) -> None:
        """Circles of radius ``r`` (scalar or per circle) at (cx, cy), all in one path of 4 Beziers each.

        The path text is produced by one ``%`` formatting of an integer numpy array, not a loop per circle:
        2000 circles cost a few milliseconds.
        """
        cx, cy, r = np.broadcast_arrays(*(np.asarray(v, dtype=float).ravel() for v in (cx, cy, r)))
        ok = np.isfinite(cx) & np.isfinite(cy) & np.isfinite(r) & (r > 0)
        cx, cy, r = cx[ok], cy[ok], r[ok]
        if cx.size == 0:
            return
        px = cx[:, None] + r[:, None] * _CIRCLE_X[None, :]
        py = cy[:, None] + r[:, None] * _CIRCLE_Y[None, :]
        xy = np.stack([px, py], axis=2) * _HUNDREDTHS  # x0 y0 x1 y1 ... per circle
        vals = np.rint(xy).astype(np.int64).ravel().tolist()
        self._paint_hundredths((_CIRCLE_FMT * cx.size) % tuple(vals), stroke, fill, width, dash)

    def circle(
        self,
        cx: float,
        cy: float,
        r: float,
        *,
        stroke: Colour | None = "black",
        fill: Colour | None = None,
        width: float = 1.0,
        dash: Sequence[float] | None = None,
    ) -> None:
        """One circle; see ``circles``."""
        self.circles(cx, cy, r, stroke=stroke, fill=fill, width=width, dash=dash)

    # -- images ----------------------------------------------------------------------------------------

    def image(
        self,
        pixels: np.ndarray,
        x: float,
        y: float,
        w: float,
        h: float,
        *,
        interpolate: bool = False,
    ) -> None:
        """Draw ``pixels`` into the rectangle (x, y, w, h); row 0 is at the top of the rectangle.

        ``pixels``: ``[ny, nx]`` gray or ``[ny, nx, 3]`` RGB; uint8, or float in [0, 1]. Scaling is
        nearest-neighbour (``/Interpolate false``) unless ``interpolate``.
        """
        a = np.asarray(pixels)
        if a.dtype != np.uint8:
            a = (np.clip(np.nan_to_num(a.astype(np.float32), nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(
                np.uint8
            )
        if a.ndim == 2:
            space = "/DeviceGray"
        elif a.ndim == 3 and a.shape[2] == 3:
            space = "/DeviceRGB"
        else:
            raise ValueError(f"image must be [ny, nx] or [ny, nx, 3], got {a.shape}")
        ny, nx = a.shape[:2]
        if nx == 0 or ny == 0:
            return
        name = f"Im{len(self._images)}"
        raw = np.ascontiguousarray(a).tobytes()
        sample = raw[len(raw) // 2 : len(raw) // 2 + _SAMPLE_BYTES]  # the middle: borders may be flat
        if len(zlib.compress(sample, _ZLIB_LEVEL)) < _MIN_GAIN_RATIO * len(sample):
            data, filt = zlib.compress(raw, _ZLIB_LEVEL), " /Filter /FlateDecode"
        else:
            data, filt = raw, ""
        interp = " /Interpolate true" if interpolate else " /Interpolate false"
        self._images.append((name, nx, ny, space + interp + filt, data))
        self._ops.append(f"q {_fmt(w)} 0 0 {_fmt(h)} {_fmt(x)} {_fmt(y)} cm /{name} Do Q\n")

    # -- text ------------------------------------------------------------------------------------------

    def text(
        self,
        x: float,
        y: float,
        text: str,
        *,
        size: float = 10.0,
        align: str = "left",
        valign: str = "baseline",
        angle: float = 0.0,
        bold: bool = False,
        colour: Colour = "black",
    ) -> float:
        """Draw ``text`` anchored at (x, y); returns its width in points.

        ``align``: left / center / right of the anchor along the baseline; ``valign``: baseline / bottom
        (descender) / center (of capitals) / top (of capitals); ``angle`` in degrees counter-clockwise
        (90 for y-axis labels).
        """
        data, units = _encode_text(text, bold)
        width = units * size / 1000.0
        if not data:
            return 0.0
        try:
            dx = _ALIGN[align] * width
            dy = _VALIGN[valign] * size
        except KeyError:
            raise ValueError(f"bad alignment {align!r} / {valign!r}") from None
        a = math.radians(angle)
        c, s = round(math.cos(a), 12), round(math.sin(a), 12)  # exact 0 / 1 at multiples of 90 degrees
        # the anchor offset (dx along the baseline, dy across it) rotated into page space
        tx = x + dx * c - dy * s
        ty = y + dx * s + dy * c
        self._set_fill(colour)
        font = "/F2" if bold else "/F1"
        self._ops.append(
            f"BT {font} {size:.2f} Tf {c:.4f} {s:.4f} {-s:.4f} {c:.4f} {_fmt(tx)} {_fmt(ty)} Tm "
            f"{_pdf_string(data)} Tj ET\n"
        )
        return width

    # -- output ----------------------------------------------------------------------------------------

    def content(self) -> bytes:
        """The page's (uncompressed) content stream."""
        return "".join(self._ops).encode("latin-1")


_FONTS = (("F1", "Helvetica"), ("F2", "Helvetica-Bold"))


def pdf_bytes(pages: Sequence[Page]) -> bytes:
    """The complete PDF file for ``pages`` (at least one page; an empty list gives one blank page)."""
    pages = list(pages) or [Page()]
    objects: list[bytes | None] = [None, None]  # 1: catalog, 2: page tree; filled in below

    def add(obj: bytes) -> int:
        objects.append(obj)
        return len(objects)

    def stream(dictionary: str, data: bytes) -> bytes:
        return f"<< {dictionary} /Length {len(data)} >>\nstream\n".encode() + data + b"\nendstream"

    font_refs = []
    for key, name in _FONTS:  # the standard 14 fonts need no widths or embedding
        font = f"<< /Type /Font /Subtype /Type1 /BaseFont /{name} /Encoding /WinAnsiEncoding >>"
        font_refs.append(f"/{key} {add(font.encode())} 0 R")
    page_ids = []
    for page in pages:
        content_id = add(stream("/Filter /FlateDecode", zlib.compress(page.content(), _ZLIB_LEVEL)))
        xobjects = []
        for name, nx, ny, entries, data in page._images:
            dictionary = f"/Type /XObject /Subtype /Image /Width {nx} /Height {ny} /BitsPerComponent 8 /ColorSpace {entries}"
            xobjects.append(f"/{name} {add(stream(dictionary, data))} 0 R")
        resources = "/Font << " + " ".join(font_refs) + " >>"
        if xobjects:
            resources += " /XObject << " + " ".join(xobjects) + " >>"
        page_ids.append(
            add(
                (
                    f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {_fmt(page.width)} {_fmt(page.height)}] "
                    f"/Resources << {resources} >> /Contents {content_id} 0 R >>"
                ).encode()
            )
        )
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    kids = " ".join(f"{i} 0 R" for i in page_ids)
    objects[1] = f"<< /Type /Pages /Kids [{kids}] /Count {len(page_ids)} >>".encode()
    info_id = add(b"<< /Producer (relion_plugins.plots.pdf) >>")

    # header with a binary comment, so that transfer tools treat the file as binary
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode()
        out += obj  # type: ignore[operator]
        out += b"\nendobj\n"
    xref = len(out)
    # each xref entry is exactly 20 bytes: 10-digit offset, 5-digit generation, type, 2-byte EOL
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{off:010d} 00000 n \n" for off in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {info_id} 0 R >>\n".encode()
    out += f"startxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def write_pdf(path: str | os.PathLike, pages: Sequence[Page]) -> None:
    """Write ``pages`` as one PDF at ``path``, atomically (a reader never sees a partial file)."""
    from relion_plugins.relion.atomic import atomic_path

    data = pdf_bytes(pages)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
