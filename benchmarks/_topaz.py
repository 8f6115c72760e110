"""Run topaz-em (PyPI, GPLv3) from its own virtual environment, for side-by-side benchmarks.

Nothing here imports topaz: every step runs the venv's ``topaz`` executable (or, to seed it, the venv's
python with a few lines that seed the RNGs and then call topaz's own command-line entry point) in a
subprocess. Each step returns the wall seconds of its subprocess; :data:`LAST` also keeps, per step,
the child CPU seconds, the exact command and the log file (useful on a shared, loaded machine where wall
time is noisy).

The environment (:func:`install_topaz`), all CPU-only::

    python3 -m venv /tmp/topaz-venv
    pip install torch==2.13.0                       # first: the local CPU wheel, no CUDA download
    pip install torch==2.13.0 torchvision==0.28.0 topaz-em==0.3.20
    # + torchvision/_meta_registrations.py: guard two unguarded fake-op registrations (see below)

topaz-em 0.3.20 requires ``torchvision`` (for ``rotate``/``hflip`` in its training augmentation); pinning
``torchvision==0.28.0`` (which pins ``torch==2.13.0``) keeps pip from replacing the CPU torch by a CUDA
build. That torchvision wheel is a CUDA build: its ``_C.so`` cannot load against the CPU torch, which is
harmless for the pure-tensor transforms topaz uses, but ``import torchvision`` then dies in
``_meta_registrations.py`` (``RuntimeError: operator torchvision::nms does not exist``) because
``register_fake("torchvision::nms")``/``qnms`` are not guarded by ``extension._has_ops()`` like the
other registrations there. :func:`install_topaz` adds that guard (idempotent). numpy 2.4 / pandas 3.1
need no pin for preprocess / train / extract.

Coordinates: topaz's particle table is tab-separated ``image_name  x_coord  y_coord`` with a header,
``image_name`` = micrograph file name without directory and extension, x = column, y = row, 0-based
integer pixels *of the downsampled image*. ``topaz preprocess -s S`` downsamples by Fourier cropping to
``int(n / S)`` pixels (sample 0 stays at 0), so x_down = x / S; topaz casts the table to int32
(truncation), so :func:`topaz_train` rounds first. ``topaz extract -x S`` multiplies the picks back by S
and rounds to int (original pixels). Extract scores are the model's logits (log-likelihood ratios,
p = sigmoid(score)); topaz stops extraction below ``-t`` (default -6, p >= 0.0025), so -6 is a generous
floor meant to be raised afterwards (``topaz convert -t``), not an operating point; score 0 is p = 0.5.

Threads: ``threads`` caps every step at that many cores: ``-j threads`` and ``OMP/MKL/OPENBLAS
_NUM_THREADS=threads`` for train / extract (``--num-workers 0``: augmentation and NMS in the main process),
and ``-t threads`` worker processes with one thread each for preprocess (it parallelises over files).
Timing is very sensitive to other load: torch's OpenMP threads spin, so a busy machine inflates both
wall and CPU seconds several-fold (0.7 s per minibatch of 256 idle vs ~5 s loaded, 2 threads).

Input formats (checked, 0.3.20): float16 MRC (mode 12) is read. topaz's STAR reader takes only the first
``data_`` block, so RELION 3.1+ particle files (``data_optics`` first) and per-micrograph coordinate STARs
(no ``rlnMicrographName``) fail with ``KeyError: 'image_name'``; a one-block file keeps the directory in
``image_name`` (never matching topaz's stems) and truncates coordinates. Hence the table written here.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_VENV",
    "LAST",
    "TOPAZ_SPEC",
    "TopazError",
    "TopazRun",
    "find_topaz",
    "install_topaz",
    "remove_venv",
    "topaz_extract",
    "topaz_preprocess",
    "topaz_train",
    "topaz_version",
]

DEFAULT_VENV = Path("/tmp/topaz-venv")
TORCH_SPEC = "torch==2.13.0"
TORCHVISION_SPEC = "torchvision==0.28.0"  # the torchvision release that pins torch==2.13.0
TOPAZ_SPEC = "topaz-em==0.3.20"


class TopazError(RuntimeError):
    """A topaz subprocess failed; the message ends with the tail of its log."""


@dataclass
class TopazRun:
    """One topaz subprocess: wall and child-CPU seconds, command, log."""

    step: str
    wall_s: float
    cpu_s: float
    cmd: list[str]
    log: str
    threads: int
    extra: dict = field(default_factory=dict)


LAST: dict[str, TopazRun] = {}  # step name ("preprocess", "train", "extract") -> its latest run


# --------------------------------------------------------------------------------------------------
# Environment


def _venv_bin(venv: str | os.PathLike, name: str) -> Path:
    return Path(venv) / "bin" / name


def find_topaz(venv: str | os.PathLike = DEFAULT_VENV) -> Path | None:
    """The venv's ``topaz`` executable, or None when it (or the venv's python) is missing."""
    exe, py = _venv_bin(venv, "topaz"), _venv_bin(venv, "python")
    if exe.is_file() and os.access(exe, os.X_OK) and py.exists():
        return exe
    return None


def topaz_version(venv: str | os.PathLike = DEFAULT_VENV) -> str:
    """``topaz --version`` (also proves that topaz and torchvision import)."""
    exe = find_topaz(venv)
    if exe is None:
        raise TopazError(f"no topaz in {venv}")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=_env(1))
    if out.returncode != 0:
        raise TopazError(f"topaz --version failed:\n{out.stderr[-3000:]}")
    return (out.stdout.strip() or out.stderr.strip()).splitlines()[-1]


def _patch_torchvision(venv: str | os.PathLike) -> bool:
    """Guard torchvision's unguarded ``register_fake("torchvision::...")`` decorators by ``_has_ops()``.

    Returns True when the file was changed. A no-op for a torchvision whose ops load (the guard is true).
    """
    files = list(Path(venv).glob("lib/python3*/site-packages/torchvision/_meta_registrations.py"))
    changed = False
    pat = re.compile(r'^@torch\.library\.register_fake\(("torchvision::\w+")\)\s*$', re.M)
    for f in files:
        text = f.read_text()
        new = pat.sub(
            r"@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))",
            text,
        )
        if new != text:
            f.write_text(new)
            changed = True
    return changed


def install_topaz(
    venv: str | os.PathLike = DEFAULT_VENV, python: str | None = None, quiet: bool = True
) -> Path:
    """Create ``venv`` (if needed) and install topaz-em there, CPU-only; returns the ``topaz`` path.

    Needs PyPI (plus the local CPU torch wheel that pip's find-links provides on this machine). Order
    matters: torch==2.13.0 first, then topaz with torchvision pinned to the release matching that torch.
    """
    venv = Path(venv)
    py = python or (sys.executable if sys.version_info < (3, 14) else "python3")
    if not _venv_bin(venv, "python").exists():
        subprocess.run([py, "-m", "venv", str(venv)], check=True)
    pip = [str(_venv_bin(venv, "python")), "-m", "pip", "install"] + (["-q"] if quiet else [])
    subprocess.run(pip + [TORCH_SPEC], check=True)
    subprocess.run(pip + [TORCH_SPEC, TORCHVISION_SPEC, TOPAZ_SPEC], check=True)
    _patch_torchvision(venv)
    exe = find_topaz(venv)
    if exe is None:
        raise TopazError(f"topaz was not installed in {venv}")
    topaz_version(venv)
    return exe


# --------------------------------------------------------------------------------------------------
# Running


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    t = str(max(int(threads), 1))
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[k] = t
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU only, whatever the machine has
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def _run(step: str, cmd: list[str], log: Path, threads: int, env_threads: int, **extra) -> TopazRun:
    log.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("# " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(env_threads)).returncode
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if rc != 0:
        tail = log.read_text()[-4000:]
        raise TopazError(f"topaz {step} exited {rc} (log {log}):\n{tail}")
    run = TopazRun(step, wall, cpu, cmd, str(log), int(threads), dict(extra))
    LAST[step] = run
    with open(log.with_suffix(".json"), "w") as f:
        json.dump(asdict(run), f, indent=1)
    return run


def _exe(venv) -> Path:
    exe = find_topaz(venv)
    if exe is None:
        raise TopazError(f"no topaz in {venv}: call install_topaz({str(venv)!r}) first")
    return exe


def _stem(path: str | os.PathLike) -> str:
    """topaz's image_name: file name without directory and (last) extension."""
    return os.path.splitext(os.path.basename(str(path)))[0]


def _named(mics) -> tuple[list[str], list[Path], bool]:
    """(names, paths, is_mapping): a mapping keeps its keys, a sequence is keyed by file stem."""
    if isinstance(mics, Mapping):
        names, paths, is_map = [str(k) for k in mics], [Path(v) for v in mics.values()], True
    else:
        paths = [Path(p) for p in mics]
        names, is_map = [_stem(p) for p in paths], False
    stems = [_stem(p) for p in paths]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise ValueError(f"topaz identifies micrographs by file stem, and {dup!r} is not unique")
    return names, paths, is_map


def _write_list(path: Path, items: Sequence[str]) -> str:
    """An argparse ``@file`` (topaz's parser has ``fromfile_prefix_chars='@'``): one argument per line."""
    path.write_text("".join(f"{s}\n" for s in items))
    return f"@{path}"


# --------------------------------------------------------------------------------------------------
# Steps


def topaz_preprocess(
    mic_paths: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    scale: int = 2,
    threads: int = 2,
    *,
    affine: bool = False,
    niters: int = 100,
    sample: int = 10,
    seed: int | None = None,
    venv: str | os.PathLike = DEFAULT_VENV,
) -> tuple[list[Path] | dict[str, Path], float]:
    """``topaz preprocess -s scale`` (Fourier-crop downsampling + per-micrograph 2-component GMM
    normalisation, topaz's defaults ``--niters 100 --sample 10 -a 900 -b 1``) into ``out_dir``.

    Returns (output paths in input order, or ``{name: path}`` when given a mapping; wall seconds). Runs
    ``threads`` worker processes (``-t``) of one thread each: preprocessing parallelises over files, and
    torch threads inside the tiny GMM fits are slower than processes (and collapse on a loaded machine).
    The GMM is fitted on a random 1/``sample`` of the pixels (unseeded in topaz, so two runs differ
    slightly); ``seed`` seeds it per micrograph through the same launcher as :func:`topaz_train`.
    """
    names, paths, is_map = _named(mic_paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = int(threads) if int(threads) > 1 else 0
    cmd = [str(_exe(venv)), "preprocess", "-s", str(scale), "-d", "-1", "-t", str(workers), "-j", "1",
           "--niters", str(niters), "--sample", str(sample), "-o", str(out)]  # fmt: skip
    if seed is not None:
        cmd = _launch(out, venv, seed, False) + cmd[1:]
    if affine:
        cmd.append("--affine")
    cmd.append(_write_list(out / "preprocess_inputs.txt", [str(p.resolve()) for p in paths]))
    run = _run("preprocess", cmd, out / "preprocess.log", threads, 1, n_micrographs=len(paths), scale=scale,
               seed=seed)  # fmt: skip
    outs = [out / f"{_stem(p)}.mrc" for p in paths]
    missing = [str(p) for p in outs if not p.exists()]
    if missing:
        raise TopazError(f"topaz preprocess wrote no {missing[:3]} (log {run.log})")
    return (dict(zip(names, outs)) if is_map else outs), run.wall_s


def _coords_for(coords: Mapping, names: list[str], paths: list[Path]) -> list[np.ndarray | None]:
    """Per micrograph: its coordinates from ``coords`` keyed by name, by path or by file stem."""
    by_stem: dict[str, object] = {}
    for k, v in coords.items():
        s = _stem(k)
        if s in by_stem:
            raise ValueError(f"coordinate keys: file stem {s!r} is not unique")
        by_stem[s] = v
    out = []
    for n, p in zip(names, paths):
        for key in (n, str(p)):
            if key in coords:
                out.append(coords[key])
                break
        else:
            out.append(by_stem.get(_stem(p), by_stem.get(_stem(n))))
    return out


def _mrc_shape(path: Path) -> tuple[int, int]:
    """(nx, ny) from an MRC header (little-endian, as topaz writes)."""
    nx, ny = np.fromfile(path, dtype="<i4", count=2)
    return int(nx), int(ny)


def _write_targets(path: Path, names: list[str], paths: list[Path], coords: Mapping, scale: float) -> int:
    """topaz particle table (downsampled pixels, rounded); returns the number of particles written."""
    n = 0
    with open(path, "w") as f:
        f.write("image_name\tx_coord\ty_coord\n")
        for p, xy in zip(paths, _coords_for(coords, names, paths)):
            if xy is None:
                continue
            xy = np.asarray(xy, dtype=np.float64).reshape(-1, np.shape(xy)[-1] if np.size(xy) else 2)[:, :2]
            nx, ny = _mrc_shape(p)  # rounding can reach n (x = n*S - 0.4): keep centres inside the image
            xy = np.clip(np.rint(xy / float(scale)), 0, [nx - 1, ny - 1]).astype(np.int64)
            for x, y in xy:
                f.write(f"{_stem(p)}\t{x}\t{y}\n")
                n += 1
    return n


def _write_images(path: Path, paths: list[Path]) -> None:
    with open(path, "w") as f:
        f.write("image_name\tpath\n")
        for p in paths:
            f.write(f"{_stem(p)}\t{p.resolve()}\n")


_LAUNCHER = """\
# Runs `topaz <args>` after optional seeding / pi fix; argv: SEED|- FIXPI(0|1) topaz-args...
import os, random, sys
seed, fix_pi, args = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
if seed != "-":
    seed = int(seed)
    import numpy as np, torch
    random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
    _default_rng, _count = np.random.default_rng, [0]
    def _seeded_default_rng(s=None):
        # topaz's crop samplers call np.random.default_rng() without a seed: derive one from ours
        if s is None:
            _count[0] += 1
            s = [seed, _count[0]]
        return _default_rng(s)
    np.random.default_rng = _seeded_default_rng
    import zlib
    import topaz.stats
    _normalize = topaz.stats.normalize
    def _seeded_normalize(x, *args, **kwargs):
        # preprocess fits its GMM on np.random.choice pixels: seed per image content (worker-independent)
        np.random.seed([seed, zlib.crc32(np.ascontiguousarray(x).tobytes())])
        return _normalize(x, *args, **kwargs)
    topaz.stats.normalize = _seeded_normalize
if fix_pi:
    import numpy as np
    import topaz.stats, topaz.training
    _orig = topaz.stats.pixels_given_radius
    def _pixels_given_radius(radius, dims=2):
        # topaz 0.3.x counts a 2-D disc on a 3-D grid ((2r+1)x too many pixels); count it in 2-D
        if dims != 2:
            return _orig(radius, dims)
        g = np.arange(-int(radius), int(radius) + 1)
        return int(((g[:, None] ** 2 + g[None, :] ** 2) <= radius ** 2).sum())
    topaz.stats.pixels_given_radius = _pixels_given_radius
    topaz.training.pixels_given_radius = _pixels_given_radius
from topaz.main import main
sys.argv = ["topaz"] + args
main()
"""


def _launch(out: Path, venv, seed: int | None, fix_pi: bool) -> list[str]:
    """Command prefix running topaz through :data:`_LAUNCHER` (written to ``out``)."""
    launcher = out / "topaz_launcher.py"
    launcher.write_text(_LAUNCHER)
    return [str(_venv_bin(venv, "python")), str(launcher), "-" if seed is None else str(int(seed)),
            "1" if fix_pi else "0"]  # fmt: skip


def topaz_train(
    train_mics: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    train_coords: Mapping[str, np.ndarray],
    test_mics: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike] | None,
    out_dir: str | os.PathLike,
    scale: float = 2,
    radius: int = 3,
    expected_particles_per_mic: float | None = None,
    num_epochs: int = 10,
    method: str = "GE-binomial",
    model: str = "resnet8",
    seed: int | None = None,
    threads: int = 2,
    *,
    epoch_size: int = 1000,
    n_epochs: int | None = None,
    test_coords: Mapping[str, np.ndarray] | None = None,
    pretrained: bool = True,
    units: int = 32,
    minibatch_size: int = 256,
    learning_rate: float | None = None,
    fix_pi: bool = False,
    extra_args: Sequence[str] = (),
    venv: str | os.PathLike = DEFAULT_VENV,
) -> tuple[Path, float]:
    """``topaz train`` on micrographs preprocessed by :func:`topaz_preprocess` with the same ``scale``.

    ``train_coords``: ``{name: [n, 2] x, y}`` in ORIGINAL micrograph pixels, keyed by the mapping key,
    path or file stem of the micrograph (micrographs without an entry are unlabeled, not dropped).
    ``radius`` (``-r``, downsampled pixels, topaz default 3) is the disc labelled positive around each
    centre. ``expected_particles_per_mic`` (``-n``) sets topaz's pi; None uses the mean number of given
    coordinates per training micrograph (right only when every particle is labelled).
    ``test_mics`` is only topaz's per-epoch monitoring and needs ``test_coords``; it does not change the
    model but costs a full scoring of those micrographs each epoch (None or empty: not passed).
    Everything else is topaz's default (10 epochs x 1000 minibatches of 256, balance 1/16, lr 2e-4,
    resnet8 with 32 units initialised from topaz's bundled pretrained resnet8_u32; ``pretrained=False``
    trains from scratch). ``seed`` (topaz has none) seeds python/numpy/torch and topaz's
    crop-sampling RNGs (``np.random.default_rng()`` without a seed) through a small launcher; None runs
    the ``topaz`` executable unseeded.

    pi: when ``-n`` is not above the number of labels per micrograph (every particle labelled), topaz
    warns and silently trains PN instead of GE-binomial. Separately, topaz 0.3.20 converts ``-n`` into pi
    with ``pixels_given_radius``, which counts the radius-r disc on a 3-D grid, (2r+1) = 7x too many
    pixels for r = 3, and uses that count for the observed positive fraction too: GE-binomial then asks
    for 7x too many positive pixels in the unlabelled data, and PN weights positives by a 7x pi.
    ``fix_pi=True`` (not topaz's shipped behaviour; off by default) counts the disc in 2-D, as topaz's
    pre-0.3 train command did.

    Returns (the last epoch's model ``out_dir/model_epoch{N}.sav``, wall seconds); the per-epoch curve
    is ``out_dir/train_curve.txt``.
    """
    if n_epochs is not None:
        num_epochs = int(n_epochs)
    exe = _exe(venv)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names, paths, _ = _named(train_mics)
    _write_images(out / "train_images.txt", paths)
    n_pos = _write_targets(out / "train_targets.txt", names, paths, train_coords, scale)
    if n_pos == 0:
        raise ValueError("no training coordinates matched the training micrographs")
    if expected_particles_per_mic is None:
        expected_particles_per_mic = n_pos / len(paths)
    cmd_args = ["train", "-d", "-1", "-j", str(int(threads)), "--num-workers", "0",
                "--train-images", str(out / "train_images.txt"),
                "--train-targets", str(out / "train_targets.txt"),
                "-n", f"{float(expected_particles_per_mic):g}", "-r", str(int(radius)),
                "--method", method, "-m", model, "--units", str(int(units)),
                "--minibatch-size", str(int(minibatch_size)),
                "--epoch-size", str(int(epoch_size)), "--num-epochs", str(int(num_epochs)),
                "--pretrained" if pretrained else "--no-pretrained",
                "--save-prefix", str(out / "model"), "-o", str(out / "train_curve.txt")]  # fmt: skip
    if learning_rate is not None:
        cmd_args += ["--learning-rate", f"{learning_rate:g}"]
    if test_mics and test_coords is not None:
        t_names, t_paths, _ = _named(test_mics)
        _write_images(out / "test_images.txt", t_paths)
        _write_targets(out / "test_targets.txt", t_names, t_paths, test_coords, scale)
        cmd_args += ["--test-images", str(out / "test_images.txt"),
                     "--test-targets", str(out / "test_targets.txt")]  # fmt: skip
    cmd_args += [str(a) for a in extra_args]
    if seed is None and not fix_pi:
        cmd = [str(exe)] + cmd_args
    else:
        cmd = _launch(out, venv, seed, fix_pi) + cmd_args
    for old in out.glob("model_epoch*.sav"):
        old.unlink()
    run = _run("train", cmd, out / "train.log", threads, threads, n_train=len(paths), n_positive=n_pos,
               expected_particles_per_mic=float(expected_particles_per_mic), num_epochs=int(num_epochs),
               epoch_size=int(epoch_size), seed=seed, fix_pi=bool(fix_pi))  # fmt: skip
    model_path = out / f"model_epoch{int(num_epochs)}.sav"
    if not model_path.exists():
        raise TopazError(f"topaz train wrote no {model_path} (log {run.log})")
    return model_path, run.wall_s


def topaz_extract(
    model_path: str | os.PathLike,
    mic_paths: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    radius: int,
    scale: float = 2,
    threads: int = 2,
    *,
    threshold: float = -6.0,
    patch_size: int = 0,
    venv: str | os.PathLike = DEFAULT_VENV,
) -> tuple[dict[str, np.ndarray], float]:
    """``topaz extract -r radius -t threshold -x scale`` on micrographs preprocessed at ``scale``.

    ``radius`` (downsampled pixels) is topaz's non-maximum-suppression radius, normally about the particle
    radius. Returns (``{name: [n, 3] x, y, score}`` with x, y in ORIGINAL micrograph pixels (topaz's
    ``-x`` upscaling: round(x_down * scale)) and score = the model's log-likelihood ratio (logit), every
    micrograph present, keyed by mapping key or file stem; wall seconds). Only picks with score >=
    ``threshold`` are produced (topaz default -6).
    """
    exe = _exe(venv)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names, paths, _ = _named(mic_paths)
    table = out / "extracted_particles.txt"
    cmd = [str(exe), "extract", "-d", "-1", "-j", str(int(threads)), "--num-workers", "0",
           "-m", str(model_path), "-r", str(int(radius)), "-t", f"{threshold:g}", "-x", f"{float(scale):g}",
           "-p", str(int(patch_size)), "-o", str(table),
           _write_list(out / "extract_inputs.txt", [str(p.resolve()) for p in paths])]  # fmt: skip
    run = _run("extract", cmd, out / "extract.log", threads, threads, n_micrographs=len(paths),
               radius=int(radius), threshold=threshold, scale=scale)  # fmt: skip
    picks: dict[str, list] = {_stem(p): [] for p in paths}
    with open(table) as f:
        header = f.readline().rstrip("\n").split("\t")
        ix, iy, iscore, iname = (header.index(c) for c in ("x_coord", "y_coord", "score", "image_name"))
        for line in f:
            tok = line.rstrip("\n").split("\t")
            if len(tok) < len(header):
                continue
            picks.setdefault(tok[iname], []).append((float(tok[ix]), float(tok[iy]), float(tok[iscore])))
    result = {
        n: np.asarray(picks.get(_stem(p), []), dtype=np.float64).reshape(-1, 3) for n, p in zip(names, paths)
    }
    return result, run.wall_s


def remove_venv(venv: str | os.PathLike = DEFAULT_VENV) -> None:
    """Delete the topaz venv (only when it looks like one made by :func:`install_topaz`)."""
    v = Path(venv)
    if (v / "pyvenv.cfg").exists():
        shutil.rmtree(v)
