"""RELION 4's per-class feature vector for 2D class ranking, and the class image the CNN sees.

The definitions follow RELION's ``src/class_ranker.{h,cpp}`` (4.0 and 5.0 are identical here); the code
is our own and works on arrays only (class averages, pixel size, mask diameter and the per-class numbers
of the model STAR), so it can be used without RELION files.

How RELION computes the image features of one class (``ClassRanker::getFeatures``):

1. The class average is Fourier-resampled to 4 Å/px (``uniform_angpix``): new box ``round(box x angpix
   / 4)``, made even. Everything below uses 4 Å/px, whatever the box really became.
2. ``R`` = mask diameter / (2 x 4 Å), at most half the new box. Pixel coordinates are integers from the
   box centre (``box // 2``), so "within R" means ``i^2 + j^2 <= R^2``.
3. The low-passed image (25 Å, RELION's raised-cosine filter ``lowPassFilterMap``, 2 shells wide) gives
   the low-pass statistics and, thresholded at 0.05 x its standard deviation, the masks: 4-connected
   islands of above-threshold pixels inside the circle of radius R that reach into the central disk of
   radius 0.6 R. An island with more than 0.1 x 3.14 x (0.6 R)^2 of its pixels in the central disk is
   protein, a smaller one is "scattered signal"; islands that never reach the central disk are ignored.
   The solvent mask is the rest of the circle.
4. Moments of the *unfiltered* 4 Å/px image in the ring, protein and solvent regions.

The 24 features, in RELION's order (``classFeatures::toNormalizedVector``):

=====  ==========================  ===================================================================  =========
#      name                        definition                                                           normalised
=====  ==========================  ===================================================================  =========
0      accuracy_rotation           ``rlnAccuracyRotations`` (deg). If > 99 (not estimated) and the      global
                                   class has <= 100 particles: 5 (RELION's default); larger classes
                                   would need RELION's expected-error calculation on particle images,
                                   which is not done here (the value is kept)
1      accuracy_translation_A      ``rlnAccuracyTranslationsAngst``; 8 with the same rule as #0         global
2      weighted_resolution         (1 / res^2) / ln(particle_nr), res = ``rlnEstimatedResolution`` (Å)   global
3      relative_resolution         res / (box x angpix): resolution relative to the box size in Å       global
4      ring_mean                   mean in the ring 0.95 R <= r <= R                                    global
5      ring_stddev                 population standard deviation in that ring                           global
6      protein_stddev              standard deviation inside the protein mask                           global
7      solvent_mean                mean inside the solvent mask                                         global
8      solvent_stddev              standard deviation inside the solvent mask                           global
9      scattered_signal            scattered pixels / (scattered + protein pixels + 1)                  global
10     edge_signal                 fraction of the pixels with round(r) == round(R) that are protein    global
11     lowpass_mean                mean of the 25 Å low-passed image (whole box)                        global
12     lowpass_stddev              its population standard deviation                                    global
13     lowpass_min                 its minimum                                                          global
14     lowpass_max                 its maximum                                                          global
15-20  granulo_1 .. granulo_6      sum over the whole image of its grey-scale opening by a disk of      global
                                   radius 1..6 px (pixels outside the image ignored)
21     protein_sum                 sum of the image inside the protein mask                             per job
22     solvent_sum                 sum of the image inside the solvent mask                             per job
23     relative_signal_intensity   protein_sum - solvent_mean x protein_area                            per job
=====  ==========================  ===================================================================  =========

"global": z-scored with the fixed means and standard deviations compiled into RELION
(``feature_normalization_global_*`` in ``class_ranker.h``, :data:`GLOBAL_MEAN` / :data:`GLOBAL_STD`).
"per job": z-scored over the scored classes of the job (population standard deviation; 0 when that is
below 1e-10). ``particle_nr`` is ``rlnClassDistribution x`` the number of particles in the data STAR, as
in RELION (not the hard per-class count), and only classes with more than 10 such particles are scored.

Extra values RELION computes but does not feed to the network are kept in :class:`ClassFeatures`: ring
skewness / kurtosis, protein mean / skewness / kurtosis, solvent skewness / kurtosis, protein and solvent
areas, the circumference-to-area ratio of the protein mask and the image / protein / solvent entropies.
Not implemented (not part of the network input): LBP histograms, Haralick features, Zernike moments and
sub-images.

CNN image (``ClassRanker::getSubimages``): the class average at its *original* pixel size is windowed
(zero-filled) to ``ceil(diameter / angpix) + 1`` pixels, made even, around the box centre, then
Fourier-resized to 64 x 64. Nothing normalises it further: RELION's C++ code and both Python wrappers
(4.0 ``class_ranker.py``, 5.0 ``relion_classranker``) pass it on as is, and the published 5.0 training
model (``relion-classranker`` ``training/model.py``) has no input normalisation layer; what the 4.0
TorchScript file does inside cannot be read from the sources. So the values stay on the class average's
own scale (the resizing keeps the mean). :func:`class_image_for_cnn` does the same unless asked to
z-score.

Small known differences from RELION: Fourier resizing treats the Nyquist bins like
:mod:`relion_plugins.imaging.fourier` (RELION copies the positive Nyquist bin and, when enlarging, drops
the corners beyond the old Nyquist circle); RELION's ``computeStats`` never takes the first pixel as the
minimum (an ``else if`` quirk); empty rings give zeros here where RELION divides by zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from ..imaging.fourier import fourier_crop, fourier_pad

__all__ = [
    "CNN_SIZE",
    "FEATURE_NAMES",
    "GLOBAL_MEAN",
    "GLOBAL_STD",
    "LOWPASS_A",
    "MIN_SCORED_PARTICLES",
    "UNIFORM_ANGPIX",
    "ClassFeatures",
    "JobFeatures",
    "Moments",
    "class_feature_details",
    "class_features",
    "class_image_for_cnn",
    "feature_names",
    "granulometry",
    "job_features",
    "moments",
    "normalize_features",
    "relion_lowpass",
    "resample_to_uniform",
    "solvent_masks",
]

UNIFORM_ANGPIX = 4.0  # Å/px of the image features (RELION's uniform_angpix)
LOWPASS_A = 25.0  # low-pass filter for the masks and statistics (RELION's --lowpass default)
RADIUS_RATIO = 0.95  # inner radius of the ring / R (--radius_ratio)
CENTRAL_RATIO = 0.6  # central disk radius / R (RELION tests r^2 <= 0.36 R^2)
CNN_SIZE = 64  # IMGSIZE in class_ranker.cpp
GRANULO_CHUNK_PIXELS = 1 << 18  # pixels per batch in granulometry (~1 MB of float32)
MIN_SCORED_PARTICLES = 10  # classes with particle_nr <= this are not scored
SMALL_CLASS_PARTICLES = 100  # accuracy fallback applies up to this many particles
SMALL_CLASS_ACCURACY = (5.0, 8.0)  # (degrees, translation) RELION uses for such classes

FEATURE_NAMES: tuple[str, ...] = (
    "accuracy_rotation",
    "accuracy_translation_A",
    "weighted_resolution",
    "relative_resolution",
    "ring_mean",
    "ring_stddev",
    "protein_stddev",
    "solvent_mean",
    "solvent_stddev",
    "scattered_signal",
    "edge_signal",
    "lowpass_mean",
    "lowpass_stddev",
    "lowpass_min",
    "lowpass_max",
    "granulo_1",
    "granulo_2",
    "granulo_3",
    "granulo_4",
    "granulo_5",
    "granulo_6",
    "protein_sum",
    "solvent_sum",
    "relative_signal_intensity",
)
N_FEATURES = len(FEATURE_NAMES)
N_GLOBAL = 21  # features 0..20 use the fixed normalisation, 21..23 the per-job one

# feature_normalization_global_mean / _stddev and the granulo ones of RELION's class_ranker.h.
GLOBAL_MEAN = np.array(
    [
        4.352,
        3.871,
        0.001,
        0.061,
        -0.199,
        0.424,
        0.744,
        -0.380,
        0.292,
        0.024,
        0.047,
        0.116,
        0.638,
        -1.112,
        2.990,
    ]
    + [837.576, 726.097, 602.175, 483.469, 328.014, 196.059]
)
GLOBAL_STD = np.array(
    [4.759, 3.019, 0.002, 0.088, 0.283, 0.629, 0.585, 0.378, 0.485, 0.075, 0.075, 0.182, 0.429, 1.087, 1.758]
    + [1958.823, 2845.330, 3605.858, 4001.972, 4399.578, 4709.751]
)


def feature_names() -> list[str]:
    """Names of the 24 features in RELION's order (see the module table)."""
    return list(FEATURE_NAMES)


# ----------------------------------------------------------------------------------------------------
# building blocks


@dataclass(frozen=True)
class Moments:
    """Sum, mean, population standard deviation, skewness and (non-excess) kurtosis of some pixels."""

    sum: float = 0.0
    mean: float = 0.0
    stddev: float = 0.0
    skew: float = 0.0
    kurt: float = 0.0
    n: int = 0


def moments(values: np.ndarray) -> Moments:
    """Moments as RELION's ``calculateMoments``: skew = m3 / m2^1.5, kurt = m4 / m2^2 (0 when flat).

    An empty selection gives all zeros.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    if n == 0:
        return Moments()
    total = float(v.sum())
    mean = total / n
    d = v - mean
    d2 = d * d
    m2 = float(d2.sum())
    if m2 == 0.0:
        return Moments(total, mean, 0.0, 0.0, 0.0, n)
    m3 = float((d2 * d).sum())
    m4 = float((d2 * d2).sum())
    return Moments(total, mean, math.sqrt(m2 / n), m3 * math.sqrt(n) / m2**1.5, m4 * n / m2**2, n)


def _c_round(x: np.ndarray | float) -> np.ndarray:
    """C's round() (half away from zero) for the non-negative values used here; numpy rounds to even."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5)


def _radius2(n: int) -> np.ndarray:
    """Squared integer distance of each pixel from the box centre ``n // 2`` (RELION's Xmipp origin)."""
    g = np.arange(n, dtype=np.int64) - n // 2
    return g[:, None] ** 2 + g[None, :] ** 2


def resample_to_uniform(avg: np.ndarray, angpix: float, target_angpix: float = UNIFORM_ANGPIX) -> np.ndarray:
    """Fourier-resample square images ``[..., n, n]`` to ``target_angpix`` as RELION's ranker does.

    The new box is ``round(n x angpix / target)`` made even (rounded down); the result is then treated as
    exactly ``target_angpix`` per pixel, as RELION does. Values keep their mean (RELION's FFT convention).
    """
    arr = np.asarray(avg, dtype=np.float32)
    n = arr.shape[-1]
    if arr.ndim < 2 or arr.shape[-2] != n:
        raise ValueError(f"class averages must be square, got shape {arr.shape}")
    if not angpix > 0:
        raise ValueError(f"pixel size must be > 0 Å, got {angpix}")
    new = int(_c_round(n * angpix / target_angpix))
    new -= new % 2
    if new < 2:
        raise ValueError(f"a {n} px box at {angpix} Å/px is too small to resample to {target_angpix} Å/px")
    if new == n:
        return arr.copy()
    return fourier_crop(arr, (new, new)) if new < n else fourier_pad(arr, (new, new))


def relion_lowpass(
    img: np.ndarray, angpix: float, resolution_A: float = LOWPASS_A, edge_width: int = 2
) -> np.ndarray:
    """RELION's ``lowPassFilterMap`` on square images ``[..., n, n]`` (float64 result).

    The cutoff shell is ``round(n x angpix / resolution)``; a raised cosine runs from ``edge_width / 2``
    shells below to as many above it (in 1/pixel: ``(shell -+ edge_width // 2) / n``).
    """
    arr = np.asarray(img, dtype=np.float64)
    n = arr.shape[-1]
    if arr.shape[-2] != n:
        raise ValueError(f"relion_lowpass needs square images, got shape {arr.shape}")
    shell = int(_c_round(n * angpix / resolution_A))
    half = edge_width // 2
    lo = max(0.0, (shell - half) / n)
    hi = (shell + half) / n
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    res = np.sqrt(fx * fx + fy * fy)
    filt = np.where(res < lo, 1.0, 0.0)
    if hi > lo:
        edge = (res >= lo) & (res <= hi)
        filt[edge] = 0.5 + 0.5 * np.cos(np.pi * (res[edge] - lo) / (hi - lo))
    return sfft.irfft2(sfft.rfft2(arr) * filt, s=(n, n))


def solvent_masks(lpf: np.ndarray, radius: float, threshold: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Protein and solvent masks of one low-passed image, and the scattered-signal fraction.

    See step 3 of the module doc (RELION's ``makeSolventMasks``). Returns boolean masks
    ``(protein, solvent)`` and ``scattered / (scattered + protein + 1)`` in pixels.
    """
    img = np.asarray(lpf)
    n = img.shape[-1]
    r2 = _radius2(n)
    circle = r2 <= radius * radius
    central = r2 <= (CENTRAL_RATIO * radius) ** 2
    above = (img > threshold) & circle
    labels, n_labels = ndimage.label(above)  # default structure: 4-connectivity, as RELION's flood fill
    if n_labels == 0:
        return np.zeros_like(circle), circle.copy(), 0.0
    inside = np.bincount(labels[central & above], minlength=n_labels + 1)
    size = np.bincount(labels.ravel(), minlength=n_labels + 1)
    seeded = inside > 0
    seeded[0] = False
    protein_islands = seeded & (inside > 0.1 * 3.14 * (CENTRAL_RATIO * radius) ** 2)
    scattered_islands = seeded & ~protein_islands
    protein = protein_islands[labels]
    n_protein = int(size[protein_islands].sum())
    n_scattered = int(size[scattered_islands].sum())
    solvent = circle & ~protein
    return protein, solvent, n_scattered / (n_scattered + n_protein + 1.0)


def granulometry(img: np.ndarray, radii: tuple[int, ...] = (1, 2, 3, 4, 5, 6)) -> np.ndarray:
    """Sum of the grey-scale opening by a disk of each radius, for images ``[..., ny, nx]`` -> ``[..., 6]``.

    Pixels outside the image are ignored (RELION's ``calculateGranulo``). A disk is the union of the
    rectangles ``|dy| <= k, |dx| <= floor(sqrt(r^2 - k^2))``, so its erosion (dilation) is the minimum
    (maximum) of separable rectangle filters; edge replication ('nearest') equals ignoring outside pixels
    for such convex, symmetric shapes. This is ~5x faster than ``scipy.ndimage.grey_opening``.
    """
    arr = np.asarray(img)
    arr = arr.astype(np.float32 if arr.dtype.itemsize <= 4 else np.float64, copy=False)
    out = np.empty(arr.shape[:-2] + (len(radii),), dtype=np.float64)
    flat = arr.reshape((-1,) + arr.shape[-2:])
    # A few images at a time: the ~70 passes over the data then run from the CPU cache (~2x faster).
    step = max(1, GRANULO_CHUNK_PIXELS // (arr.shape[-2] * arr.shape[-1]))
    if flat.shape[0] > step:
        res = out.reshape(-1, len(radii))
        for i in range(0, flat.shape[0], step):
            res[i : i + step] = _granulometry(flat[i : i + step], radii)
        return out
    out[...] = _granulometry(arr, radii)
    return out


def _granulometry(arr: np.ndarray, radii: tuple[int, ...]) -> np.ndarray:
    out = np.empty(arr.shape[:-2] + (len(radii),), dtype=np.float64)
    vertical_min: dict[int, np.ndarray] = {}  # the erosion input is shared by all radii
    for idx, r in enumerate(radii):
        rects = _disk_rectangles(r)
        eroded = None
        for k, w in rects:
            if k not in vertical_min:
                vertical_min[k] = _filter1d(arr, k, -2, np.minimum)
            part = _filter1d(vertical_min[k], w, -1, np.minimum)
            eroded = part if eroded is None else np.minimum(eroded, part, out=eroded)
        opened = None
        for k, w in rects:
            part = _filter1d(_filter1d(eroded, k, -2, np.maximum), w, -1, np.maximum)
            opened = part if opened is None else np.maximum(opened, part, out=opened)
        out[..., idx] = opened.sum(axis=(-2, -1), dtype=np.float64)
    return out


def _disk_rectangles(r: int) -> list[tuple[int, int]]:
    """(half-height, half-width) of the maximal rectangles whose union is the disk of radius r."""
    widths = [math.isqrt(r * r - k * k) for k in range(r + 1)]
    # Rectangle k lies inside rectangle k + 1 when both are as wide: keep only the last of each width.
    return [(k, widths[k]) for k in range(r + 1) if k == r or widths[k + 1] < widths[k]]


def _filter1d(a: np.ndarray, half: int, axis: int, op) -> np.ndarray:
    """Running min / max over ``[-half, half]`` along ``axis`` with edge replication.

    Van Herk-like doubling: windows of length 1, 2, 4... are combined, then two overlapping windows of
    the largest power of two cover the full width; about log2(width) array operations in all.
    """
    if half == 0:
        return a
    size = 2 * half + 1
    n = a.shape[axis]
    pad = [(0, 0)] * a.ndim
    pad[axis] = (half, half)
    m = np.pad(a, pad, mode="edge")
    length = 1
    while 2 * length <= size:
        m = op(_take(m, 0, m.shape[axis] - length, axis), _take(m, length, m.shape[axis], axis))
        length *= 2
    rest = size - length
    return op(_take(m, 0, n, axis), _take(m, rest, rest + n, axis))


def _take(a: np.ndarray, start: int, stop: int, axis: int) -> np.ndarray:
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, stop)
    return a[tuple(index)]


def _circumference(protein: np.ndarray) -> int:
    """Protein pixels with at least one non-protein 8-neighbour (outside the box counts as non-protein)."""
    p = np.pad(protein, 1)
    inner = p[1:-1, 1:-1]
    all_in = inner.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                all_in &= p[1 + dy : p.shape[0] - 1 + dy, 1 + dx : p.shape[1] - 1 + dx]
    return int((inner & ~all_in).sum())


def _entropy(values: np.ndarray) -> float:
    """RELION's ``MultidimArray::entropy``: 128-bin histogram, empty bins counted once, log2."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return 0.0
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-20:
        return 0.0
    bins = np.floor((v - lo) * 127.0 / (hi - lo)).astype(np.int64)
    hist = np.bincount(bins, minlength=128).astype(np.float64)
    hist[hist < 1] = 1.0
    p = hist / hist.sum()
    return float(-(p * np.log2(p)).sum())


# ----------------------------------------------------------------------------------------------------
# one class


@dataclass
class ClassFeatures:
    """Raw (not normalised) features of one class, including RELION's extras outside the vector."""

    accuracy_rotation: float
    accuracy_translation_A: float
    weighted_resolution: float
    relative_resolution: float
    ring: Moments
    protein: Moments
    solvent: Moments
    scattered_signal: float
    edge_signal: float
    lowpass_mean: float
    lowpass_stddev: float
    lowpass_min: float
    lowpass_max: float
    granulo: np.ndarray
    relative_signal_intensity: float
    protein_area: int
    solvent_area: int
    circumference_area_ratio: float
    entropy: float
    protein_entropy: float
    solvent_entropy: float
    radius_px: float  # R at 4 Å/px
    accuracy_note: str = ""  # why the accuracies are not the model's values, if they are not
    masks: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # (protein, solvent)

    def vector(self) -> np.ndarray:
        """The 24 raw features in RELION's order (float64)."""
        return np.array(
            [
                self.accuracy_rotation,
                self.accuracy_translation_A,
                self.weighted_resolution,
                self.relative_resolution,
                self.ring.mean,
                self.ring.stddev,
                self.protein.stddev,
                self.solvent.mean,
                self.solvent.stddev,
                self.scattered_signal,
                self.edge_signal,
                self.lowpass_mean,
                self.lowpass_stddev,
                self.lowpass_min,
                self.lowpass_max,
                *self.granulo,
                self.protein.sum,
                self.solvent.sum,
                self.relative_signal_intensity,
            ],
            dtype=np.float64,
        )


def _accuracies(acc_rot: float, acc_trans_A: float, particle_nr: float) -> tuple[float, float, str]:
    if acc_rot > 99.0 or acc_trans_A > 99.0:
        if particle_nr <= SMALL_CLASS_PARTICLES:
            rot, trans = SMALL_CLASS_ACCURACY
            return rot, trans, f"not estimated by RELION; small-class default ({rot:g} deg, {trans:g})"
        return float(acc_rot), float(acc_trans_A), "not estimated by RELION and not recomputed here"
    return float(acc_rot), float(acc_trans_A), ""


def _resolution_features(resolution_A: float, particle_nr: float, box_A: float) -> tuple[float, float]:
    if not (math.isfinite(resolution_A) and resolution_A > 0):
        raise ValueError(f"estimated resolution must be a positive number of Å, got {resolution_A}")
    log_n = math.log(particle_nr) if particle_nr > 0 else float("nan")
    weighted = (
        (1.0 / (resolution_A * resolution_A)) / log_n if log_n and math.isfinite(log_n) else float("nan")
    )
    return weighted, resolution_A / box_A


def _image_features(img4: np.ndarray, lpf: np.ndarray, granulo: np.ndarray, radius: float, keep_masks: bool):
    """Everything computed from the 4 Å/px image and its low-passed version (one class)."""
    n = img4.shape[-1]
    r2 = _radius2(n)
    ring_sel = (r2 >= (RADIUS_RATIO * radius) ** 2) & (r2 <= radius * radius)
    ring = moments(img4[ring_sel])
    lp_mean = float(lpf.mean())
    lp_std = float(np.sqrt(abs(float((lpf * lpf).mean()) - lp_mean * lp_mean)))  # RELION's population SD
    protein, solvent, scattered = solvent_masks(lpf, radius, 0.05 * lp_std)
    pm = moments(img4[protein])
    sm = moments(img4[solvent])
    protein_area = int(protein.sum())
    solvent_area = int((r2 <= radius * radius).sum()) - protein_area
    edge_sel = _c_round(np.sqrt(r2)) == _c_round(radius)
    n_edge = int(edge_sel.sum())
    edge = float(protein[edge_sel].sum()) / n_edge if n_edge else 0.0
    car = _circumference(protein) / (2.0 * math.sqrt(3.14 * protein_area)) if protein_area > 0 else 0.0
    return dict(
        ring=ring,
        protein=pm,
        solvent=sm,
        scattered_signal=scattered,
        edge_signal=edge,
        lowpass_mean=lp_mean,
        lowpass_stddev=lp_std,
        lowpass_min=float(lpf.min()),
        lowpass_max=float(lpf.max()),
        granulo=np.asarray(granulo, dtype=np.float64),
        relative_signal_intensity=pm.sum - sm.mean * protein_area,
        protein_area=protein_area,
        solvent_area=solvent_area,
        circumference_area_ratio=car,
        entropy=_entropy(img4),
        protein_entropy=_entropy(img4[protein]) if protein_area else 0.0,
        solvent_entropy=_entropy(img4[solvent]) if solvent.any() else 0.0,
        radius_px=radius,
        masks=(protein, solvent) if keep_masks else None,
    )


def _radius(n4: int, mask_diameter_A: float) -> float:
    if not mask_diameter_A > 0:
        raise ValueError(f"mask diameter must be > 0 Å, got {mask_diameter_A}")
    return min(n4 / 2.0, mask_diameter_A / (UNIFORM_ANGPIX * 2.0))


def class_feature_details(
    avg: np.ndarray,
    angpix: float,
    mask_diameter_A: float,
    *,
    particle_nr: float,
    resolution_A: float,
    acc_rot: float,
    acc_trans_A: float,
    keep_masks: bool = False,
) -> ClassFeatures:
    """All features of one class average ``[n, n]`` (original pixel size ``angpix``, mask diameter in Å).

    ``particle_nr`` is RELION's ``rlnClassDistribution x`` number of particles; ``resolution_A`` is the
    class's ``rlnEstimatedResolution``; ``acc_rot`` (deg) and ``acc_trans_A`` (Å) its accuracies.
    ``keep_masks`` keeps the protein / solvent masks (at 4 Å/px) for inspection.
    """
    arr = np.asarray(avg, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected one class average [n, n], got shape {arr.shape}")
    rot, trans, note = _accuracies(float(acc_rot), float(acc_trans_A), float(particle_nr))
    weighted, relative = _resolution_features(float(resolution_A), float(particle_nr), arr.shape[-1] * angpix)
    img4 = resample_to_uniform(arr, angpix).astype(np.float64)
    lpf = relion_lowpass(img4, UNIFORM_ANGPIX, LOWPASS_A)
    radius = _radius(img4.shape[-1], mask_diameter_A)
    feats = _image_features(img4, lpf, granulometry(img4), radius, keep_masks)
    return ClassFeatures(rot, trans, weighted, relative, accuracy_note=note, **feats)


def class_features(
    avg: np.ndarray,
    angpix: float,
    mask_diameter_A: float,
    *,
    particle_nr: float,
    resolution_A: float,
    acc_rot: float,
    acc_trans_A: float,
) -> np.ndarray:
    """The 24 raw (not normalised) features of one class; see :func:`class_feature_details`."""
    return class_feature_details(
        avg,
        angpix,
        mask_diameter_A,
        particle_nr=particle_nr,
        resolution_A=resolution_A,
        acc_rot=acc_rot,
        acc_trans_A=acc_trans_A,
    ).vector()


# ----------------------------------------------------------------------------------------------------
# normalisation and the CNN image


def normalize_features(raw: np.ndarray) -> np.ndarray:
    """RELION's normalised vectors ``[N, 24]`` (float32) from raw ones of the classes of one job.

    Features 0..20: ``(x - GLOBAL_MEAN) / GLOBAL_STD``. Features 21..23: z-scored over the rows given
    (rows with NaN are ignored for the statistics and stay NaN), 0 when the population SD is < 1e-10.
    """
    x = np.asarray(raw, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != N_FEATURES:
        raise ValueError(f"expected raw features [N, {N_FEATURES}], got shape {x.shape}")
    out = np.empty_like(x)
    out[:, :N_GLOBAL] = (x[:, :N_GLOBAL] - GLOBAL_MEAN) / GLOBAL_STD
    ok = np.isfinite(x).all(axis=1)
    local = x[:, N_GLOBAL:]
    if ok.any():
        mean = local[ok].mean(axis=0)
        std = np.sqrt(((local[ok] - mean) ** 2).mean(axis=0))
    else:
        mean = np.zeros(N_FEATURES - N_GLOBAL)
        std = np.zeros(N_FEATURES - N_GLOBAL)
    safe = np.where(std < 1e-10, 1.0, std)
    out[:, N_GLOBAL:] = np.where(std < 1e-10, 0.0, (local - mean) / safe)
    out[~ok] = np.nan
    return out.astype(np.float32)


def class_image_for_cnn(
    avg: np.ndarray, angpix: float, mask_diameter_A: float, size: int = CNN_SIZE, normalize: bool = False
) -> np.ndarray:
    """The class image RELION feeds its CNN: ``[size, size]`` float32 (or ``[K, size, size]`` for a stack).

    The average is windowed around the box centre to ``ceil(diameter / angpix) + 1`` pixels (made even;
    zero-filled where the window is larger than the box), then Fourier-resized to ``size`` (mean kept).
    RELION does no further normalisation; ``normalize=True`` z-scores each image (mean 0, SD 1) instead.
    """
    arr = np.asarray(avg, dtype=np.float32)
    if arr.ndim < 2 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"class averages must be square, got shape {arr.shape}")
    if not (angpix > 0 and mask_diameter_A > 0):
        raise ValueError(f"pixel size and mask diameter must be > 0, got {angpix} and {mask_diameter_A}")
    n = arr.shape[-1]
    width = int(math.ceil(mask_diameter_A / angpix)) + 1
    width += width % 2
    # Window [c - width/2, c + width/2) around the centre c = n // 2, zero outside the box.
    start = n // 2 - width // 2
    src0, src1 = max(start, 0), min(start + width, n)
    win = np.zeros(arr.shape[:-2] + (width, width), dtype=np.float32)
    win[..., src0 - start : src1 - start, src0 - start : src1 - start] = arr[..., src0:src1, src0:src1]
    if width > size:
        out = fourier_crop(win, (size, size))
    elif width < size:
        out = fourier_pad(win, (size, size))
    else:
        out = win
    if normalize:
        mean = out.mean(axis=(-2, -1), keepdims=True)
        std = out.std(axis=(-2, -1), keepdims=True)
        out = (out - mean) / np.where(std > 0, std, 1.0)
    return np.ascontiguousarray(out, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------
# a whole job


@dataclass
class JobFeatures:
    """Features of all classes of a job (rows = classes, in class order).

    ``raw`` and ``normalized`` are ``[K, 24]`` (NaN rows for classes that are not scored), ``images`` the
    CNN inputs ``[K, 64, 64]`` (all classes), ``scored`` which classes RELION would score (particle_nr
    > 10), ``particle_nr`` RELION's per-class particle numbers and ``details`` the
    :class:`ClassFeatures` of scored classes (None elsewhere).
    """

    raw: np.ndarray
    normalized: np.ndarray
    images: np.ndarray
    scored: np.ndarray
    particle_nr: np.ndarray
    details: list[ClassFeatures | None]

    @property
    def names(self) -> list[str]:
        """Feature names (columns of ``raw`` / ``normalized``)."""
        return feature_names()


def job_features(
    averages: np.ndarray,
    angpix: float,
    mask_diameter_A: float,
    distribution: np.ndarray,
    n_particles: int,
    resolution_A: np.ndarray,
    acc_rot: np.ndarray,
    acc_trans_A: np.ndarray,
    min_particles: float = MIN_SCORED_PARTICLES,
    keep_masks: bool = False,
) -> JobFeatures:
    """Features and CNN images of every class of a 2D classification job, RELION-style.

    ``averages`` is ``[K, n, n]`` at ``angpix``; ``distribution``, ``resolution_A``, ``acc_rot`` and
    ``acc_trans_A`` are the per-class values of ``model_classes``; ``n_particles`` is the number of
    particles in the data STAR. Classes with ``distribution x n_particles <= min_particles`` are not
    scored (their rows stay NaN). All images are processed in one batch for speed.
    """
    avgs = np.asarray(averages, dtype=np.float32)
    if avgs.ndim != 3:
        raise ValueError(f"expected class averages [K, n, n], got shape {avgs.shape}")
    k = avgs.shape[0]
    arrays = {
        "distribution": distribution,
        "resolution_A": resolution_A,
        "acc_rot": acc_rot,
        "acc_trans_A": acc_trans_A,
    }
    vals = {}
    for name, a in arrays.items():
        v = np.asarray(a, dtype=np.float64).reshape(-1)
        if v.shape[0] != k:
            raise ValueError(f"{name} has {v.shape[0]} values for {k} class averages")
        vals[name] = v
    particle_nr = vals["distribution"] * float(n_particles)
    scored = particle_nr > min_particles
    images = class_image_for_cnn(avgs, angpix, mask_diameter_A) if k else np.zeros((0, CNN_SIZE, CNN_SIZE))
    raw = np.full((k, N_FEATURES), np.nan)
    details: list[ClassFeatures | None] = [None] * k
    idx = np.nonzero(scored)[0]
    if idx.size:
        img4 = resample_to_uniform(avgs[idx], angpix).astype(np.float64)
        lpf = relion_lowpass(img4, UNIFORM_ANGPIX, LOWPASS_A)
        gran = granulometry(img4)
        radius = _radius(img4.shape[-1], mask_diameter_A)
        box_A = avgs.shape[-1] * angpix
        for j, c in enumerate(idx):
            n_c = float(particle_nr[c])
            rot, trans, note = _accuracies(vals["acc_rot"][c], vals["acc_trans_A"][c], n_c)
            try:
                weighted, relative = _resolution_features(vals["resolution_A"][c], n_c, box_A)
            except ValueError as exc:
                raise ValueError(f"class {c + 1}: {exc}") from None
            feats = _image_features(img4[j], lpf[j], gran[j], radius, keep_masks)
            details[c] = ClassFeatures(rot, trans, weighted, relative, accuracy_note=note, **feats)
            raw[c] = details[c].vector()
    normalized = normalize_features(raw) if k else np.zeros((0, N_FEATURES), np.float32)
    return JobFeatures(
        raw=raw, normalized=normalized, images=images, scored=scored, particle_nr=particle_nr, details=details
    )
