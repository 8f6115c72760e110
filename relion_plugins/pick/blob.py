"""Adaptive LoG (A-LoG) blob picker: multiscale scale-normalised LoG, junk mask, greedy disk suppression.

Pipeline (on a *working* copy of the micrograph, Fourier-cropped so that the smallest particle is ~16 px):

1. Robust normalisation (median / MAD) and sign flip so that particles are bright.
2. Eleven LoG filters (``imaging.log_filter``), geometric diameters: 4 below ``d_min``, 3 in
   ``[d_min, d_max]`` (``d_min``, ``sqrt(d_min d_max)``, ``d_max``) and 4 above ``d_max``, each tuned to
   ``SPHERE_FACTOR`` x the diameter. Per pixel: the best in-range and the best out-of-range response.
3. Score = in-range response minus how much the out-of-range filters see beyond it. Blobs whose best filter
   is two or more steps out of range (specks, large junk) are not candidates; RELION's stricter rule (any
   out-of-range best filter) rejects most real particles, because noise moves the best filter one step.
4. Figure of merit: ``fom = (score - mean) / std`` over the usable area (inside the border, outside the
   junk mask), comparable between micrographs.
5. Candidates are local maxima, sorted by fom and accepted greedily, each suppressing a disk of
   ``SUPPRESS_FACTOR`` x its detected diameter (or ``min_distance_A``).
6. Threshold: the same score on the contrast-inverted micrograph has only noise peaks; the default is
   their median plus k robust SDs, k set by how crowded the micrograph's peaks are compared with them
   (raised on clean micrographs and into a clear gap above the noise, see ``_noise_threshold``).
   ``adjust_threshold`` is added, like RELION's ``log_adjust_thr``; ``upper_threshold`` drops picks above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from relion_plugins.imaging.fourier import fourier_crop
from relion_plugins.imaging.log_filter import split_response
from relion_plugins.pick.junk_mask import junk_mask
from relion_plugins.pick.nms import greedy_disks as _greedy_disks

N_BELOW = 4
N_ABOVE = 4
N_INSIDE = 3
MIN_OUTER_STEP = 1.2
UPPER_OFF = 999.0  # RELION's convention: an upper threshold this large means "no upper threshold"
# Filters are built for SPHERE_FACTOR x the particle diameter, and the detected size is reported back as a
# particle diameter. Theory: a projected uniform sphere of diameter d answers best to the filter tuned to a
# disk of 0.85 d (measured numerically, independent of d). Real particles answer to smaller filters: the
# nominal diameter is the outer one while the density (and, after the CTF, the dark core) is concentrated
# in the middle. The best-response filter at true particles was 0.5-0.7 d on the EMPIAR-10017 train split
# and on simulated micrographs (tuning seeds only); 0.6 is the compromise. RELION's filter,
# sigma = d / pi = 0.32 d, corresponds to a factor of 0.9 in these units.
SPHERE_FACTOR = 0.6
OUT_PENALTY = 1.0
OUT_MARGIN = 0.7
SUPPRESS_FACTOR = 0.5
AUTO_K = 1.5
TARGET_PX = 16.0


@dataclass
class PickResult:
    """Picks in ORIGINAL micrograph pixels (0-based, x = column), sorted by decreasing ``fom``."""

    x: np.ndarray
    y: np.ndarray
    fom: np.ndarray
    diameter_A: np.ndarray
    threshold: float  # lower threshold used, in fom units (automatic threshold + adjust_threshold)
    upper_threshold: float | None  # in fom units, None when off
    working_angpix: float
    mask: np.ndarray | None = None  # bool, working grid, True = excluded (junk or border)
    response: np.ndarray | None = None  # fom map on the working grid (optional)
    diameters_A: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the 11 filter diameters
    n_candidates: int = 0

    def __len__(self) -> int:
        return int(self.x.size)

    @property
    def xy(self) -> np.ndarray:
        """``[n, 2]`` array of (x, y)."""
        return np.stack([self.x, self.y], axis=1)


def filter_diameters(d_min: float, d_max: float) -> tuple[np.ndarray, int, int]:
    """The 11 filter diameters (same unit as the inputs) and the slice ``[lo, hi)`` of the in-range ones."""
    d_min, d_max = float(min(d_min, d_max)), float(max(d_min, d_max))
    if d_min <= 0:
        raise ValueError("particle diameters must be positive")
    q = math.sqrt(d_max / d_min)
    inside = [d_min, math.sqrt(d_min * d_max), d_max]
    step = max(q, MIN_OUTER_STEP)
    below = [d_min / step**k for k in range(N_BELOW, 0, -1)]
    above = [d_max * step**k for k in range(1, N_ABOVE + 1)]
    return np.array(below + inside + above), N_BELOW, N_BELOW + N_INSIDE


def default_working_angpix(angpix: float, d_min_A: float, lowpass_A: float | None) -> float:
    """Pixel size at which the smallest in-range particle is ~TARGET_PX (16) px, never finer than the data.

    Capped at ``lowpass_A / 2`` (its Nyquist) so that cropping never removes what the low-pass keeps.
    """
    target = d_min_A / TARGET_PX
    if lowpass_A:
        target = min(target, lowpass_A / 2.0)
    return max(float(angpix), target)


def _crop_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    # even sizes keep the Nyquist handling of rfft simple
    return tuple(max(2 * int(round(n / factor / 2.0)), 16) for n in shape)  # type: ignore[return-value]


def _robust_normalise(img: np.ndarray) -> np.ndarray:
    # every other pixel each way: a quarter of the work, and the estimates move by far less than the noise
    sample = img[::2, ::2] if img.size >= 4096 else img
    med = float(np.median(sample))
    mad = float(np.median(np.abs(sample - med))) * 1.4826
    if not np.isfinite(mad) or mad <= 1e-12:
        mad = float(img.std()) or 1.0
    return ((img - med) / mad).astype(np.float32, copy=False)


def pick_blobs(
    image: np.ndarray,
    angpix: float,
    diameter_min_A: float,
    diameter_max_A: float,
    *,
    adjust_threshold: float = 0.0,
    upper_threshold: float | None = None,
    lowpass_A: float | None = 20.0,
    use_junk_mask: bool = True,
    top_k: int | None = None,
    min_distance_A: float | None = None,
    invert: bool = False,
    working_angpix: float | None = None,
    border_A: float | None = None,
    return_response: bool = False,
    junk_kwargs: dict | None = None,
    workers: int = 1,
) -> PickResult:
    """Pick blob-like particles of diameter ``[diameter_min_A, diameter_max_A]`` in one micrograph.

    ``image``: 2D array, particles dark unless ``invert`` (RELION's ``--LoG_invert``: particles light).
    ``adjust_threshold`` / ``upper_threshold``: lower / upper limits of the fom, in standard deviations of
    the best-response map above its mean (RELION's ``log_adjust_thr`` / ``log_upper_thr``; ``None`` or
    >= 999 switches the upper limit off). ``lowpass_A``: Gaussian low-pass resolution before filtering.
    ``top_k``: keep at most this many picks (highest fom first; for pseudo-labels). ``min_distance_A``:
    minimum distance between picks (default: a disk of ``SUPPRESS_FACTOR`` x the detected diameter).
    ``working_angpix``: pixel size to work at (default: smallest particle ~16 px). ``border_A``: no picks
    closer than this to the edge (default: half the largest diameter). ``workers``: FFT threads (a job that
    picks several micrographs at once gives each one thread, so that ``--j`` bounds the cores used).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"pick_blobs expects a 2D micrograph, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise ValueError("micrograph contains NaN or Inf values")
    angpix = float(angpix)
    if angpix <= 0:
        raise ValueError("pixel size must be positive")
    d_min_A, d_max_A = sorted((float(diameter_min_A), float(diameter_max_A)))

    # --- working grid
    wa = (
        default_working_angpix(angpix, d_min_A, lowpass_A)
        if working_angpix is None
        else float(working_angpix)
    )
    wa = max(wa, angpix)
    factor = wa / angpix
    if factor > 1.05:  # a crop by a few percent costs two big FFTs for nothing
        wshape = _crop_shape(img.shape, factor)
        work = fourier_crop(img, wshape)  # anti-aliased; pixel 0 stays at 0
    else:
        wshape = img.shape
        work = img
    scale_y = img.shape[0] / wshape[0]
    scale_x = img.shape[1] / wshape[1]
    wa = angpix * 0.5 * (scale_x + scale_y)  # the exact pixel size of the working grid

    work = _robust_normalise(work)
    if not invert:
        work = -work  # particles bright from here on; the LoG bank answers bright blobs

    # --- multiscale LoG: best in-range response, best out-of-range response
    diams_A, lo, hi = filter_diameters(d_min_A, d_max_A)
    lp_px = lowpass_A / wa if lowpass_A else None
    r_in, r_out, idx, idx_out, n_in, n_out = split_response(
        work,
        diams_A * SPHERE_FACTOR / wa,
        slice(lo, hi),
        lowpass_px=lp_px,
        workers=max(1, int(workers)),
        with_minima=True,
    )
    # A blob of the wanted size answers best inside the range; a speck or a large blob answers better
    # outside it. Rather than rejecting every pixel whose overall best filter is outside the range (noise
    # makes that happen to a large share of real particles), the score is the in-range response minus a
    # penalty for what the out-of-range filters see in excess of it.
    score = r_in - np.float32(OUT_PENALTY) * np.maximum(r_out - r_in, 0.0)
    # The same score on the contrast-inverted micrograph: particles give no blobs there (they become holes),
    # so its peaks sample the noise (and ice texture) of this very micrograph whatever the crowding or SNR.
    noise_score = -n_in - np.float32(OUT_PENALTY) * np.maximum(n_in - n_out, 0.0)

    # --- usable area: border and junk
    border = 0.5 * d_max_A if border_A is None else float(border_A)
    b = int(math.ceil(border / wa))
    excluded = np.zeros(wshape, dtype=bool)
    if b > 0:
        excluded[:b] = excluded[-b:] = True
        excluded[:, :b] = excluded[:, -b:] = True
    if use_junk_mask:
        jm = junk_mask(work, wa, 0.5 * (d_min_A + d_max_A), invert=True, **(junk_kwargs or {}))
        excluded |= jm
    usable = ~excluded
    if usable.sum() < 16:  # everything masked: fall back to the border only for statistics
        usable = np.ones(wshape, dtype=bool)
        if b > 0 and 2 * b < min(wshape):
            usable[:b] = usable[-b:] = False
            usable[:, :b] = usable[:, -b:] = False

    vals = score[usable]
    mu = float(vals.mean())
    sd = float(vals.std()) or 1.0
    fom_map = (score - np.float32(mu)) / np.float32(sd)
    upper = None if upper_threshold is None or upper_threshold >= UPPER_OFF else float(upper_threshold)

    # --- candidates: local maxima of the score, accepted greedily by fom with disk suppression
    rmin_px = max(1, int(round(0.125 * d_min_A / wa)))
    foot = np.hypot(*np.mgrid[-rmin_px : rmin_px + 1, -rmin_px : rmin_px + 1]) <= rmin_px
    local_max = score >= ndi.maximum_filter(score, footprint=foot, mode="nearest")
    # ... but a blob that the out-of-range filters see much more strongly (a speck, a large blob) is not a
    # particle candidate at all: hard rejection only beyond this margin, so noise cannot cause it
    cand = local_max & ~excluded & (r_in >= np.float32(OUT_MARGIN) * r_out)
    # RELION's rule (best filter outside the range -> wrong size) rejects many real particles because noise
    # moves the best filter one step out; a blob whose best filter lies two or more steps outside the range
    # (a speck, an ice grain, a large contaminant) is of the wrong size whatever the noise.
    far_out = (idx_out <= lo - 2) | (idx_out >= hi + 1)
    cand &= ~(far_out & (r_out > r_in))
    if upper is not None:
        cand &= fom_map < upper
    cy, cx = np.nonzero(cand)
    cf = fom_map[cy, cx]
    order = np.lexsort((cx, cy, -cf))  # by fom, ties by position: deterministic
    cy, cx, cf = cy[order], cx[order], cf[order]
    cd_A = diams_A[idx[cy, cx]].astype(np.float64)
    # each accepted peak suppresses a disk (or one of radius min_distance_A); SUPPRESS_FACTOR scales its
    # diameter from the detected one: half of it (radius d/4) did better than d on crowded tuning data,
    # where neighbours touch and a full-diameter disk lets a noise peak between two particles block both
    keep = _greedy_disks(
        cy,
        cx,
        cd_A / wa * SUPPRESS_FACTOR,
        wshape,
        None if min_distance_A is None else min_distance_A / wa,
        None,
    )
    # The greedy pass is order-preserving: the picks above any threshold are the same whether or not the
    # weaker candidates took part, so the whole set of separated peaks is found once and cut afterwards.
    pf = cf[keep]
    if NOISE_REFERENCE:
        nmax = noise_score >= ndi.maximum_filter(noise_score, footprint=foot, mode="nearest")
        ny_, nx_ = np.nonzero(nmax & ~excluded & (-n_in >= np.float32(OUT_MARGIN) * -n_out))
        nfom = (noise_score[ny_, nx_] - np.float32(mu)) / np.float32(sd)
        norder = np.lexsort((nx_, ny_, -nfom))
        mean_d = np.full(norder.size, 0.5 * (d_min_A + d_max_A) / wa * SUPPRESS_FACTOR)
        nkeep = _greedy_disks(ny_[norder], nx_[norder], mean_d, wshape, None, None)
        auto = _noise_threshold(nfom[norder][nkeep], pf)
    else:
        auto = _auto_threshold(pf)
    thr = auto + float(adjust_threshold)
    keep = keep[pf > thr]
    if top_k is not None:
        keep = keep[: max(int(top_k), 0)]
    ky, kx = cy[keep], cx[keep]
    # sub-pixel refinement would need a fit; pixel centres mapped back exactly (pixel 0 stays at 0)
    x = kx.astype(np.float64) * scale_x
    y = ky.astype(np.float64) * scale_y
    return PickResult(
        x=x,
        y=y,
        fom=cf[keep].astype(np.float64),
        diameter_A=cd_A[keep],
        threshold=thr,
        upper_threshold=upper,
        working_angpix=wa,
        mask=excluded,
        response=fom_map if return_response else None,
        diameters_A=diams_A,
        n_candidates=int(cy.size),
    )


NOISE_REFERENCE = True
# Threshold = median + k robust SDs of the noise-reference peaks, k chosen by how the micrograph's peaks
# compare with the noise reference one SD above its median (``ratio``, see _noise_threshold). Tuned on
# simulated tuning seeds (4096² at 1 Å/px and 1024² at 4 Å/px) and the EMPIAR-10017 train split.
RATIO_JUNK = 0.8  # fewer image than reference peaks: the reference is inflated by junk rims
RATIO_WEAK = 1.25  # about as many image as reference peaks: particles barely above the noise
K_JUNK = 0.5
K_WEAK = 1.5
K_CLEAR = 0.8
CLEAN_SHARE = 0.7


def _noise_threshold(noise_fom: np.ndarray, peak_fom: np.ndarray) -> float:
    """Threshold from the noise-reference peaks ``noise_fom`` and the micrograph's peaks ``peak_fom``."""
    if noise_fom.size < 8:
        return _auto_threshold(peak_fom)
    # Median and spread from the lower half only: junk (bright rims of contaminants, holes) fattens the
    # reference's upper tail, never its lower half.
    med = float(np.median(noise_fom))
    low = med - noise_fom[noise_fom < med]
    spread = float(np.median(low)) * 1.4826 if low.size else 0.0
    if spread <= 0:
        return _auto_threshold(peak_fom)
    level = med + spread
    ratio = (np.count_nonzero(peak_fom > level) + 1) / (np.count_nonzero(noise_fom > level) + 1)
    # Particles well above the noise give many more image peaks than reference peaks at this level, and
    # the best threshold is low; weak particles (about as many peaks as the noise) need a stricter one to
    # keep precision; a reference with *more* peaks than the image is inflated by junk edges, and its
    # spread overstates the noise.
    if ratio < RATIO_JUNK:
        k = K_JUNK
    elif ratio < RATIO_WEAK:
        k = K_WEAK
    else:
        k = K_CLEAR
    thr = med + k * spread
    # Clean micrographs: when most peaks above the threshold also beat every noise-reference peak, the
    # particles stand clear of the noise, and the noise peaks that the threshold lets through are all that
    # is left between them: keep only what beats the whole noise reference.
    top = float(noise_fom.max())
    if np.count_nonzero(peak_fom > top) >= CLEAN_SHARE * np.count_nonzero(peak_fom > thr):
        thr = top
    return _gap_above(peak_fom, thr, spread, top)


GAP_K = 4.0
GAP_MIN_ABOVE = 10
GAP_MIN_SHARE = 0.5
GAP_MIN_SHARE_CLEAR = 0.1


def _auto_threshold(peak_fom: np.ndarray) -> float:
    """Default threshold from the foms of all separated peaks of the micrograph.

    Most separated peaks are noise, so the median describes the noise peaks. Their spread is taken from
    the peaks below the median only: particles inflate the upper half (in crowded micrographs a large
    share of the peaks are particles), while the lower half is noise whatever the crowding. A particle
    has to stand ``AUTO_K`` of these robust SDs above the median (AUTO_K tuned on simulated tuning seeds
    and the EMPIAR-10017 train split).
    """
    if peak_fom.size < 8:
        return 0.0  # too few peaks for statistics: RELION's default, the mean of the responses
    med = float(np.median(peak_fom))
    low = med - peak_fom[peak_fom < med]
    spread = float(np.median(low)) * 1.4826 if low.size else 0.0
    return _gap_above(peak_fom, med + AUTO_K * spread, spread)


def _gap_above(peak_fom: np.ndarray, thr: float, spread: float, noise_top: float = np.inf) -> float:
    """Move ``thr`` into the first clear gap of the peak foms above it, if there is one.

    ``spread`` is the SD of the noise peaks; ``noise_top`` the highest noise-reference peak."""
    # On clean micrographs the particle peaks stand apart from the noise peaks: the sorted foms above the
    # threshold jump by many noise SDs. Noise order statistics never jump that far (the top spacings of a
    # Gaussian sample are a fraction of its SD), so the lowest such jump separates noise from particles.
    above = np.sort(peak_fom[peak_fom > thr])
    if spread > 0 and above.size >= 2:
        jumps = np.flatnonzero(np.diff(above) > GAP_K * spread)
        n_upper = above.size - 1 - jumps
        # Particle-sized junk (small dark contaminants) also stands far above the particles. A gap counts
        # when most candidates lie above it, or a fair share does and they beat every noise-reference
        # peak (particles clear of the noise; junk micrographs have strong junk rims in the reference).
        clear = above[np.minimum(jumps + 1, above.size - 1)] > noise_top
        ok = n_upper >= max(GAP_MIN_ABOVE, GAP_MIN_SHARE * above.size)
        ok |= clear & (n_upper >= max(GAP_MIN_ABOVE, GAP_MIN_SHARE_CLEAR * above.size))
        jumps = jumps[ok]
        if jumps.size:
            j = int(jumps[0])
            thr = 0.5 * (above[j] + above[j + 1])
    return thr
