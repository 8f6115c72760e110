"""Direct simulation of 2D class averages, for training and testing class rankers.

A class is the CTF-corrected average of ``n_images`` aligned particle images of one view of a particle
(projections from :func:`relion_plugins.simulate.micrograph.projection_bank`), optionally mixed with junk
and with controlled misalignment:

1. Each image's projected density (pre-CTF) is built in the aligned frame: the class view rotated by a
   random in-plane error (SD ``rot_jitter_deg``) and shifted by a random error (SD ``shift_jitter_A`` per
   axis), or a piece of junk (see :data:`JUNK_KINDS`).
2. The density is multiplied by the image's CTF (RELION convention, random defocus, B-factor envelope);
   ice and carbon also get real-space amplitude contrast; white noise of SD 1 is added. The signal
   scale makes the class view's CTF-filtered variance over the particle footprint ``snr`` times the noise
   variance (as in the micrograph simulator). Contrast is that of extracted particles after RELION's
   ``--invert_contrast``: protein is bright.
3. The images are averaged with a Wiener filter, ``sum CTF_i F_i / (sum CTF_i^2 + N_pix / (T tau2))``
   with T = 2 and tau2 the shell power of the coherent signal, then masked with a soft circle of the
   mask diameter (5 px cosine edge) like RELION's 2D references, whose background is 0.

The signal and noise parts of the average are tracked separately, so the reported numbers follow from
the content: ``resolution_A`` is RELION's "resolution where the SSNR drops below 1" of the average
(the box size in Å when it is never above 1), ``acc_trans_A`` / ``acc_rot`` are the Cramér-Rao precision of
aligning one image against the coherent signal (x 3.03, where the likelihood ratio falls to 0.01, as in
RELION's accuracy definition), combined with the simulated misalignment.

Junk kinds: ``ice`` (a dark crystal or contaminant blob: strong phase and amplitude contrast),
``carbon`` (a film edge at a class-consistent angle), ``empty`` (noise only), ``offcentre`` (a particle
shifted by 0.35-0.6 diameters), ``neighbour`` (the centred particle plus a neighbour about one diameter
away: counted as a true particle, since the pick is right), ``aggregate`` (3-6 overlapping particles).

Labels: ``true_fraction`` is the share of images holding a centred true particle; ``quality`` =
``true_fraction x exp(-(rot_jitter / 15 deg)^2) x exp(-(shift_jitter / (0.15 diameter))^2)`` and
``good`` is ``quality >= 0.5``. Everything is deterministic given the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft

from ..imaging.ctf import ctf_2d
from .micrograph import _blob_shape, _paste, _place_projection, projection_bank

__all__ = [
    "JUNK_KINDS",
    "ClassSimConfig",
    "SimulatedClass",
    "simulate_class",
    "simulate_class_set",
    "stack_classes",
]

JUNK_KINDS: tuple[str, ...] = ("ice", "carbon", "empty", "offcentre", "neighbour", "aggregate")
# Kinds whose images hold a correctly picked, centred particle.
_TRUE_KINDS = {"particle", "neighbour"}
MASK_EDGE_PX = 5  # RELION's default --width_mask_edge
TAU2_FUDGE = 2.0  # RELION's default T for 2D classification
NOISE_TAU2_FLOOR = 0.3  # low-resolution tau2 floor, as a fraction of the average's noise power
MAX_ACC_ROT = 45.0  # degrees: accuracies of signal-free classes are capped here
LIKELIHOOD_WIDTH = math.sqrt(-2.0 * math.log(0.01))  # 3.03: exp(-x^2 / 2) = 0.01


@dataclass(frozen=True)
class ClassSimConfig:
    """Imaging parameters shared by all classes of a simulated job."""

    box: int = 64
    angpix: float = 4.0
    particle: str = "globular"  # phantom name, map alias or MRC path (see phantoms.get_volume)
    diameter_A: float | None = None  # scale the particle to this diameter; None: its own
    phantom_seed: int = 0
    bank_size: int = 64  # projections (views) available
    n_images: int = 100
    snr: float = 0.05  # per image, over the particle footprint, after the CTF
    defocus_um: tuple[float, float] = (1.0, 2.5)
    astigmatism_um: float = 0.05
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    bfactor: float = 60.0
    mask_diameter_A: float | None = None  # default: 1.2 x the particle diameter, within the box


@dataclass
class SimulatedClass:
    """One simulated class average and what it is made of."""

    average: np.ndarray  # [box, box] float32
    good: bool
    quality: float  # 0..1, see the module doc
    true_fraction: float
    kind: str  # "particle" or the dominant junk kind
    composition: dict[str, int]  # images per content kind
    n_images: int
    resolution_A: float
    acc_rot: float  # degrees
    acc_trans_A: float
    rot_jitter_deg: float
    shift_jitter_A: float
    angpix: float
    diameter_A: float
    mask_diameter_A: float
    view: int  # index of the class view in the projection bank
    ssnr: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))  # per Fourier shell


def _mask_diameter(cfg: ClassSimConfig, diameter_A: float) -> float:
    if cfg.mask_diameter_A is not None:
        return float(cfg.mask_diameter_A)
    return float(min(1.2 * diameter_A, (cfg.box - 2 * MASK_EDGE_PX) * cfg.angpix))


def _soft_circle(box: int, radius: float, edge: float = MASK_EDGE_PX) -> np.ndarray:
    g = np.arange(box) - box // 2
    r = np.sqrt(g[:, None] ** 2 + g[None, :] ** 2)
    t = np.clip((r - radius) / edge, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


def _shells(box: int) -> np.ndarray:
    """Fourier shell index (RELION: round(|k| x box)) of each rfft2 bin."""
    fy = np.fft.fftfreq(box)[:, None] * box
    fx = np.fft.rfftfreq(box)[None, :] * box
    return np.floor(np.sqrt(fx * fx + fy * fy) + 0.5).astype(np.int64)


def _hermitian_weight(box: int) -> np.ndarray:
    """Multiplicity of each rfft2 bin in the full spectrum (for Parseval sums)."""
    w = np.full(box // 2 + 1, 2.0)
    w[0] = 1.0
    if box % 2 == 0:
        w[-1] = 1.0
    return w[None, :]


class _Renderer:
    """Builds the pre-CTF density and real-space amplitude term of single images."""

    def __init__(self, cfg: ClassSimConfig, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.rng = rng
        self.bank, self.diameter_A = projection_bank(
            cfg.particle, cfg.angpix, cfg.bank_size, cfg.phantom_seed, cfg.diameter_A
        )
        self.d_px = self.diameter_A / cfg.angpix
        self.peak = float(np.mean([p.max() for p in self.bank[:: max(1, len(self.bank) // 8)]]))
        self.c = cfg.box // 2
        # Class-consistent choices (RELION aligns the members of a class onto each other).
        self.view = int(rng.integers(len(self.bank)))
        self.angle0 = float(rng.uniform(0, 2 * np.pi))
        self.direction = float(rng.uniform(0, 2 * np.pi))
        self.offcentre = float(rng.uniform(0.35, 0.6))
        self.edge_offset = float(rng.uniform(-0.4, 0.4)) * self.d_px

    def particle(self, dens: np.ndarray, rot_jitter: float, shift_px: float, view: int | None = None) -> None:
        dx, dy = self.rng.normal(0.0, shift_px, 2) if shift_px > 0 else (0.0, 0.0)
        angle = self.angle0 + (self.rng.normal(0.0, math.radians(rot_jitter)) if rot_jitter > 0 else 0.0)
        proj = self.bank[self.view if view is None else view]
        _place_projection(dens, proj, self.c + dx, self.c + dy, angle)

    def junk(self, kind: str, dens: np.ndarray, amp: np.ndarray, rot_jitter: float, shift_px: float) -> None:
        rng, c, d = self.rng, self.c, self.d_px
        if kind == "empty":
            return
        if kind == "ice":
            radius = d * rng.uniform(0.3, 0.8)
            mask = _blob_shape(rng, radius, crystal=bool(rng.random() < 0.5))
            h = mask.shape[0] // 2
            x0 = int(round(c + rng.normal(0, 0.15 * d))) - h
            y0 = int(round(c + rng.normal(0, 0.15 * d))) - h
            _paste(dens, mask * np.float32(self.peak * rng.uniform(0.5, 1.5)), x0, y0)
            _paste(amp, mask * np.float32(rng.uniform(0.3, 1.0)), x0, y0)
            return
        if kind == "carbon":
            theta = self.direction + rng.normal(0, 0.1)
            g = np.arange(self.cfg.box, dtype=np.float32) - c
            sd = g[None, :] * math.cos(theta) + g[:, None] * math.sin(theta) - self.edge_offset
            sd -= rng.normal(0, 0.1 * d)  # edges of different images are aligned only roughly
            film = np.clip(sd / (0.05 * d) + 0.5, 0.0, 1.0).astype(np.float32)
            grain = rng.standard_normal(film.shape).astype(np.float32)
            dens += film * np.float32(0.6 * self.peak) + film * grain * np.float32(0.3 * self.peak)
            amp += film * np.float32(rng.uniform(0.3, 1.0))
            return
        if kind == "offcentre":
            r = self.offcentre * d
            x = c + r * math.cos(self.direction) + rng.normal(0, shift_px + 0.05 * d)
            y = c + r * math.sin(self.direction) + rng.normal(0, shift_px + 0.05 * d)
            _place_projection(
                dens, self.bank[int(rng.integers(len(self.bank)))], x, y, rng.uniform(0, 2 * np.pi)
            )
            return
        if kind == "neighbour":
            self.particle(dens, rot_jitter, shift_px)
            r = d * rng.uniform(0.9, 1.2)
            a = self.direction + rng.normal(0, 0.5)
            x, y = c + r * math.cos(a), c + r * math.sin(a)
            _place_projection(
                dens, self.bank[int(rng.integers(len(self.bank)))], x, y, rng.uniform(0, 2 * np.pi)
            )
            return
        if kind == "aggregate":
            for _ in range(int(rng.integers(3, 7))):
                x, y = c + rng.normal(0, 0.35 * d, 2)
                bank_i = int(rng.integers(len(self.bank)))
                _place_projection(dens, self.bank[bank_i], x, y, rng.uniform(0, 2 * np.pi))
            return
        raise ValueError(f"unknown junk kind {kind!r}; known: {', '.join(JUNK_KINDS)}")


def simulate_class(
    config: ClassSimConfig | None = None,
    rng: np.random.Generator | int | None = 0,
    *,
    true_fraction: float = 1.0,
    junk: str | dict[str, float] = "empty",
    rot_jitter_deg: float = 0.0,
    shift_jitter_A: float = 0.0,
    n_images: int | None = None,
) -> SimulatedClass:
    """Simulate one class average (see the module doc).

    ``true_fraction`` of the images are the class view (with the given misalignment); the others are
    junk of kind ``junk``, or drawn from a ``{kind: weight}`` mixture. ``n_images`` overrides the config.
    """
    cfg = config or ClassSimConfig()
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if not 0.0 <= true_fraction <= 1.0:
        raise ValueError(f"true_fraction must be in [0, 1], got {true_fraction}")
    mixture = {junk: 1.0} if isinstance(junk, str) else dict(junk)
    for kind in mixture:
        if kind not in JUNK_KINDS:
            raise ValueError(f"unknown junk kind {kind!r}; known: {', '.join(JUNK_KINDS)}")
    n = int(n_images if n_images is not None else cfg.n_images)
    if n < 1:
        raise ValueError(f"need at least one image, got {n}")
    box, angpix = int(cfg.box), float(cfg.angpix)
    ren = _Renderer(cfg, rng)
    shift_px = float(shift_jitter_A) / angpix

    # Content of each image: the number of true particles is exact, so small classes keep their fraction.
    n_true = int(round(true_fraction * n))
    kinds_j = list(mixture)
    weights = np.array([mixture[k] for k in kinds_j], dtype=np.float64)
    junk_draw = rng.choice(len(kinds_j), size=n - n_true, p=weights / weights.sum()) if n > n_true else []
    contents = ["particle"] * n_true + [kinds_j[i] for i in junk_draw]
    contents = [contents[i] for i in rng.permutation(n)]

    ctf_args = dict(
        voltage_kV=cfg.voltage_kV,
        cs_mm=cfg.cs_mm,
        amplitude_contrast=cfg.amplitude_contrast,
        bfactor=cfg.bfactor,
    )
    # Signal scale: the class view's CTF-filtered variance over its footprint is snr (noise variance 1).
    mean_df = 0.5e4 * (cfg.defocus_um[0] + cfg.defocus_um[1])
    probe = np.zeros((box, box), np.float32)
    _place_projection(probe, ren.bank[ren.view], ren.c, ren.c, 0.0)
    filt = sfft.irfft2(
        sfft.rfft2(probe) * ctf_2d((box, box), angpix, mean_df, mean_df, 0.0, **ctf_args), s=(box, box)
    )
    g = np.arange(box) - box // 2
    foot = (g[:, None] ** 2 + g[None, :] ** 2) <= (0.5 * ren.d_px) ** 2
    var = float(filt[foot].var())
    gain = math.sqrt(cfg.snr / var) if var > 0 else 0.0

    mask_d = _mask_diameter(cfg, ren.diameter_A)
    taper = _soft_circle(box, 0.5 * mask_d / angpix)
    num_sig = np.zeros((box, box // 2 + 1), np.complex128)
    num_noise = np.zeros_like(num_sig)
    den = np.zeros((box, box // 2 + 1), np.float64)
    chunk = max(1, min(n, (1 << 22) // (box * box)))  # FFT many images at once, in bounded memory
    for start in range(0, n, chunk):
        part = contents[start : start + chunk]
        m = len(part)
        dens = np.zeros((m, box, box), np.float32)
        amp = np.zeros((m, box, box), np.float32)
        ctf = np.empty((m, box, box // 2 + 1), np.float32)
        for j, content in enumerate(part):
            if content == "particle":
                ren.particle(dens[j], rot_jitter_deg, shift_px)
            else:
                ren.junk(content, dens[j], amp[j], rot_jitter_deg, shift_px)
            df = 1e4 * rng.uniform(*cfg.defocus_um)
            ast = 1e4 * rng.uniform(0.0, cfg.astigmatism_um)
            ctf[j] = ctf_2d((box, box), angpix, df + ast, df - ast, float(rng.uniform(0, 180)), **ctf_args)
        # RELION masks the images with the mask diameter; tapering the content here also keeps junk that
        # is cut by the box edge from adding a box-edge signal every image shares.
        dens *= taper
        sig = ctf * (sfft.rfft2(dens) * np.float32(gain))
        if amp.any():
            amp *= taper
            sig += sfft.rfft2(amp)
        noise = sfft.rfft2(rng.standard_normal((m, box, box), dtype=np.float32))
        num_sig += (ctf * sig).sum(axis=0)
        num_noise += (ctf * noise).sum(axis=0)
        den += (ctf.astype(np.float64) ** 2).sum(axis=0)

    n_pix = float(box * box)
    shells = _shells(box)
    n_shells = box // 2 + 1
    inside = shells < n_shells
    safe_den = np.maximum(den, 1e-12)
    # Expected SSNR of the average per shell: |sum CTF S|^2 / (sum CTF^2 x noise power).
    ssnr_bins = np.abs(num_sig) ** 2 / (safe_den * n_pix)
    count = np.bincount(shells[inside], minlength=n_shells).astype(np.float64)
    ssnr = np.bincount(shells[inside], weights=ssnr_bins[inside], minlength=n_shells) / np.maximum(count, 1)
    below = np.nonzero(ssnr[1:] < 1.0)[0]
    if below.size == 0:
        resolution = 2.0 * angpix
    else:
        shell = int(below[0])  # the shell before the first one under 1
        # No shell above 1: report the coarsest shell (box size), not RELION's 999 "not estimated".
        resolution = box * angpix / max(shell, 1)

    # Wiener-filtered, CTF-corrected average; tau2 from the coherent signal's shell power.
    coherent = num_sig / safe_den
    tau2_shell = np.bincount(
        shells[inside], weights=(np.abs(coherent) ** 2)[inside], minlength=n_shells
    ) / np.maximum(count, 1)
    # RELION's references always hold some low-resolution power, even for noise-only classes (noise
    # aligned onto noise): floor tau2 at a fraction of the noise power of the average below ~40 Å.
    den_shell = np.bincount(shells[inside], weights=den[inside], minlength=n_shells) / np.maximum(count, 1)
    k_A = np.arange(n_shells) / (box * angpix)
    floor = NOISE_TAU2_FLOOR * n_pix / np.maximum(den_shell, 1e-12) * np.exp(-((k_A * 40.0) ** 2))
    tau2_shell = np.maximum(tau2_shell, floor)
    tau2 = np.where(inside, tau2_shell[np.minimum(shells, n_shells - 1)], 0.0)
    reg = np.where(tau2 > 0, n_pix / (TAU2_FUDGE * np.maximum(tau2, 1e-30)), np.inf)
    avg = sfft.irfft2((num_sig + num_noise) / (den + reg), s=(box, box))
    average = (avg * taper).astype(np.float32)

    acc_rot, acc_trans = _accuracies(coherent, den, n, box, angpix, rot_jitter_deg, shift_jitter_A)
    comp: dict[str, int] = {}
    for content in contents:
        comp[content] = comp.get(content, 0) + 1
    n_true_like = sum(v for k, v in comp.items() if k in _TRUE_KINDS)
    tf = n_true_like / n
    d_A = ren.diameter_A
    quality = (
        tf * math.exp(-((rot_jitter_deg / 15.0) ** 2)) * math.exp(-((shift_jitter_A / (0.15 * d_A)) ** 2))
    )
    dominant = max(comp, key=lambda k: (comp[k], k == "particle"))
    return SimulatedClass(
        average=average,
        good=quality >= 0.5,
        quality=float(quality),
        true_fraction=float(tf),
        kind=dominant,
        composition=comp,
        n_images=n,
        resolution_A=float(resolution),
        acc_rot=acc_rot,
        acc_trans_A=acc_trans,
        rot_jitter_deg=float(rot_jitter_deg),
        shift_jitter_A=float(shift_jitter_A),
        angpix=angpix,
        diameter_A=float(d_A),
        mask_diameter_A=mask_d,
        view=ren.view,
        ssnr=ssnr,
    )


def _accuracies(
    coherent: np.ndarray, den: np.ndarray, n: int, box: int, angpix: float, rot_jitter: float, shift_A: float
) -> tuple[float, float]:
    """(rotation deg, translation Å) precision of aligning one image to the class's coherent signal."""
    w = _hermitian_weight(box)
    # Per-image signal energy after the CTF (Parseval; noise variance 1 per pixel).
    power = w * (den / n) * np.abs(coherent) ** 2 / (box * box)
    energy = float(power.sum())
    fy = np.fft.fftfreq(box, d=angpix)[:, None]
    fx = np.fft.rfftfreq(box, d=angpix)[None, :]
    k2 = fx * fx + fy * fy
    if energy <= 1e-12:
        sigma_x = 0.25 * box * angpix
        sigma_rot = MAX_ACC_ROT
    else:
        k_rms = math.sqrt(float((power * k2).sum()) / energy)
        sigma_x = 1.0 / (2 * math.pi * max(k_rms, 1e-6) * math.sqrt(energy))
        # Radius of gyration of the coherent signal converts a position error at its edge to an angle.
        real = sfft.irfft2(coherent, s=(box, box))
        g = (np.arange(box) - box // 2) * angpix
        r2 = g[:, None] ** 2 + g[None, :] ** 2
        e = np.fft.fftshift(real) ** 2
        r_g = math.sqrt(float((e * r2).sum()) / max(float(e.sum()), 1e-30))
        sigma_rot = math.degrees(sigma_x / max(r_g, angpix))
    acc_trans = math.hypot(LIKELIHOOD_WIDTH * sigma_x, shift_A)
    acc_rot = math.hypot(LIKELIHOOD_WIDTH * sigma_rot, rot_jitter)
    return float(min(acc_rot, MAX_ACC_ROT)), float(min(acc_trans, 0.25 * box * angpix))


def simulate_class_set(
    n_classes: int,
    seed: int = 0,
    good_fraction: float = 0.5,
    config: ClassSimConfig | None = None,
    n_images: tuple[int, int] = (30, 300),
) -> list[SimulatedClass]:
    """A job's worth of classes: ``round(good_fraction x n_classes)`` good ones, the rest bad, shuffled.

    Good classes: 75-100 % true particles (the rest empty ice or other junk), small misalignment. Bad
    classes: junk-dominated (ice, carbon, empty, off-centre, aggregate) or badly misaligned particles.
    Class ``i`` uses the seed ``[seed, i]``; the good / bad layout uses ``seed`` alone.
    """
    cfg = config or ClassSimConfig()
    n_good = int(round(good_fraction * n_classes))
    is_good = np.zeros(n_classes, dtype=bool)
    is_good[:n_good] = True
    is_good = is_good[np.random.default_rng(seed).permutation(n_classes)]
    out = []
    bad_kinds = ("ice", "carbon", "empty", "offcentre", "aggregate", "misaligned")
    for i in range(n_classes):
        rng = np.random.default_rng([seed, i])
        n_img = int(rng.integers(n_images[0], n_images[1] + 1))
        if is_good[i]:
            out.append(
                simulate_class(
                    cfg,
                    rng,
                    true_fraction=float(rng.uniform(0.75, 1.0)),
                    junk={"empty": 0.5, "ice": 0.15, "carbon": 0.1, "offcentre": 0.1, "neighbour": 0.15},
                    rot_jitter_deg=float(rng.uniform(0.0, 6.0)),
                    shift_jitter_A=float(rng.uniform(0.0, 0.04)) * _diameter(cfg),
                    n_images=n_img,
                )
            )
            continue
        kind = bad_kinds[int(rng.integers(len(bad_kinds)))]
        if kind == "misaligned":
            out.append(
                simulate_class(
                    cfg,
                    rng,
                    true_fraction=float(rng.uniform(0.6, 1.0)),
                    junk="empty",
                    rot_jitter_deg=float(rng.uniform(25.0, 90.0)),
                    shift_jitter_A=float(rng.uniform(0.15, 0.3)) * _diameter(cfg),
                    n_images=n_img,
                )
            )
        else:
            out.append(
                simulate_class(
                    cfg, rng, true_fraction=float(rng.uniform(0.0, 0.3)), junk=kind, n_images=n_img
                )
            )
    return out


def _diameter(cfg: ClassSimConfig) -> float:
    return float(
        projection_bank(cfg.particle, cfg.angpix, cfg.bank_size, cfg.phantom_seed, cfg.diameter_A)[1]
    )


def stack_classes(classes: list[SimulatedClass]) -> dict[str, np.ndarray]:
    """Arrays for a list of classes, as a 2D classification job would give them.

    Keys: ``averages`` [K, box, box], ``distribution`` (image share), ``n_images``, ``resolution_A``,
    ``acc_rot``, ``acc_trans_A``, ``good``, ``quality``, ``true_fraction``.
    """
    if not classes:
        raise ValueError("no classes given")
    n_img = np.array([c.n_images for c in classes], dtype=np.int64)
    return {
        "averages": np.stack([c.average for c in classes]),
        "distribution": n_img / n_img.sum(),
        "n_images": n_img,
        "resolution_A": np.array([c.resolution_A for c in classes]),
        "acc_rot": np.array([c.acc_rot for c in classes]),
        "acc_trans_A": np.array([c.acc_trans_A for c in classes]),
        "good": np.array([c.good for c in classes]),
        "quality": np.array([c.quality for c in classes]),
        "true_fraction": np.array([c.true_fraction for c in classes]),
    }
