"""Read the result of a RELION 2D classification (``Class2D/jobNNN/run_itNNN_*``).

:func:`read_class2d` accepts what a user or a job may hand us:

* the job directory (``Class2D/job012/``): the last iteration is found from the file names, covering
  EM (``run_it025_*``), VDAM (``run_it200_*``) and continued runs (``run_ct5_it025_*``; a continue of a
  continue is ``run_ct5_ct12_it030_*``);
* ``run_itNNN_optimiser.star``: the model and data STAR files are the ones it names
  (``rlnModelStarFile``, ``rlnExperimentalDataStarFile``);
* ``run_itNNN_model.star`` or ``run_itNNN_data.star`` (what ``--in_parts`` gets): the other files are
  the siblings with the same root.

File names inside RELION files (``rlnReferenceImage = 000001@Class2D/job012/run_it025_classes.mrcs``,
``rlnModelStarFile``...) are relative to the project directory. Unless it is given, the project directory
is found as the current directory or the closest parent of the STAR file under which the named files exist.

Format differences handled (checked against RELION 3.1.3 output and the RELION 4.0 / 5.0 sources,
``src/ml_model.cpp``):

* ``rlnAccuracyTranslationsAngst`` (Å; RELION 3.1, 4.0, 5.0) or the pre-3.1 ``rlnAccuracyTranslations``
  (pixels, converted to Å with ``rlnPixelSize`` as RELION's own reader does);
* ``rlnEstimatedResolution`` / ``rlnOverallFourierCompleteness`` missing in old files: 0, as RELION reads
  them (:meth:`Class2DResult.estimated_resolution` then applies RELION's SSNR fallback);
* ``rlnNrOpticsGroups`` in ``model_general`` only from 4.0 on; 3.1 writes ``data_model_group_N`` noise
  blocks where 4.0/5.0 write ``data_model_optics_group_N``;
* VDAM runs add ``rlnGradMoment1`` / ``rlnGradMoment2`` to ``model_classes``;
* a pre-3.1 data STAR with a single unnamed block and no optics table.

Every problem is a :class:`Class2DError` (a ``ValueError``) with a one-line message naming the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .mrc import MrcError, open_stack, parse_image_name, read_header
from .star import StarError, read_block, read_star

__all__ = [
    "Class2DError",
    "Class2DFiles",
    "Class2DResult",
    "find_class2d_files",
    "read_class2d",
    "resolution_from_ssnr",
]

# Labels a model_classes table must have (RELION's MlModel::readStar refuses files without them).
_REQUIRED_CLASS_LABELS = ("rlnReferenceImage", "rlnClassDistribution", "rlnAccuracyRotations")
_REQUIRED_GENERAL_LABELS = ("rlnNrClasses", "rlnPixelSize", "rlnOriginalImageSize")

# <root>_it<NNN>_<kind>.star; the root carries the _ctN parts of continued runs.
_ITER_FILE = re.compile(r"^(?P<root>.+?)_it(?P<it>\d+)_(?P<kind>optimiser|model|data)\.star$")
_CT = re.compile(r"_ct(\d+)")
_VERSION_LINE = re.compile(rb"#\s*version\s+(\d+)")
_RELION_LINE = re.compile(rb"#\s*RELION optimiser;\s*version\s+(\S+)")


class Class2DError(ValueError):
    """A Class2D result cannot be used; the message is one line and names the file."""


@dataclass(frozen=True)
class Class2DFiles:
    """The STAR files of one iteration (absolute paths) and the project directory they refer to."""

    model_star: Path
    optimiser_star: Path | None
    data_star: Path | None
    project_dir: Path
    iteration: int | None
    root: str  # e.g. "run_ct5_it025": file names without the _<kind>.star ending


@dataclass
class Class2DResult:
    """One iteration of a 2D classification, as tables and arrays.

    ``classes`` is ``model_classes`` with RELION's labels (``rlnAccuracyTranslationsAngst`` always
    present, in Å); ``general`` is ``model_general``; ``optimiser`` is ``optimiser_general`` (empty when
    no optimiser STAR was found); ``particles`` / ``optics`` come from the data STAR (``None`` when it
    was not read). Class ``k`` (1-based, RELION's ``rlnClassNumber``) is row ``k - 1`` everywhere.
    """

    files: Class2DFiles
    general: dict[str, Any]
    classes: pd.DataFrame
    optimiser: dict[str, Any] = field(default_factory=dict)
    particles: pd.DataFrame | None = None
    optics: pd.DataFrame | None = None
    star_version: int | None = None  # the "# version" number of the model STAR (30001, 50001)
    relion_version: str | None = None  # from the optimiser's first line ("3.1.3"), when written
    _stack: np.ndarray | None = field(default=None, repr=False)
    _stack_index: np.ndarray | None = field(default=None, repr=False)

    # -- scalars -------------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        """Number of classes (``rlnNrClasses``)."""
        return int(self.general["rlnNrClasses"])

    @property
    def angpix(self) -> float:
        """Pixel size of the class averages in Å (``rlnPixelSize`` of the model)."""
        return float(self.general["rlnPixelSize"])

    @property
    def box_size(self) -> int:
        """Box size of the class averages in pixels (``rlnOriginalImageSize``)."""
        return int(self.general["rlnOriginalImageSize"])

    @property
    def particle_diameter_A(self) -> float | None:
        """Mask diameter in Å: the optimiser's ``rlnParticleDiameter`` (None without an optimiser)."""
        value = self.optimiser.get("rlnParticleDiameter")
        return None if value is None else float(value)

    @property
    def current_resolution_A(self) -> float:
        """``rlnCurrentResolution`` of the model, in Å."""
        return float(self.general.get("rlnCurrentResolution", np.nan))

    @property
    def tau2_fudge(self) -> float:
        """Regularisation parameter T (``rlnTau2FudgeFactor``)."""
        return float(self.general.get("rlnTau2FudgeFactor", np.nan))

    @property
    def iteration(self) -> int | None:
        """Iteration number (``rlnCurrentIteration``, else the one in the file name)."""
        it = self.optimiser.get("rlnCurrentIteration")
        return int(it) if it is not None else self.files.iteration

    @property
    def is_vdam(self) -> bool:
        """True for a gradient-driven run: VDAM in RELION 4/5 (``rlnGradMoment1`` images, or
        ``rlnDoStochasticGradientDescent``, the label RELION 4/5 write for ``--grad``); SGD in 3.1."""
        return "rlnGradMoment1" in self.classes.columns or bool(
            self.optimiser.get("rlnDoStochasticGradientDescent", False)
        )

    @property
    def do_ctf_correction(self) -> bool | None:
        """``rlnDoCorrectCtf`` of the optimiser (RELION's class ranker refuses jobs without it)."""
        value = self.optimiser.get("rlnDoCorrectCtf")
        return None if value is None else bool(value)

    @property
    def n_particles(self) -> int:
        """Number of particles in the data STAR (0 when it was not read)."""
        return 0 if self.particles is None else len(self.particles)

    # -- per-class arrays ----------------------------------------------------------------------------
    @property
    def class_numbers(self) -> np.ndarray:
        """1-based class numbers ``[K]`` (the ``N`` of ``N@..._classes.mrcs``)."""
        return np.arange(1, self.n_classes + 1, dtype=np.int64)

    @property
    def distribution(self) -> np.ndarray:
        """``rlnClassDistribution`` ``[K]`` (sums to 1)."""
        return self.classes["rlnClassDistribution"].to_numpy(dtype=np.float64)

    @property
    def resolution_A(self) -> np.ndarray:
        """``rlnEstimatedResolution`` ``[K]`` in Å as written (0 when the file has none)."""
        return self.classes["rlnEstimatedResolution"].to_numpy(dtype=np.float64)

    @property
    def accuracy_rotation(self) -> np.ndarray:
        """``rlnAccuracyRotations`` ``[K]`` in degrees (RELION writes 999 where not estimated)."""
        return self.classes["rlnAccuracyRotations"].to_numpy(dtype=np.float64)

    @property
    def accuracy_translation_A(self) -> np.ndarray:
        """``rlnAccuracyTranslationsAngst`` ``[K]`` in Å."""
        return self.classes["rlnAccuracyTranslationsAngst"].to_numpy(dtype=np.float64)

    @property
    def fourier_completeness(self) -> np.ndarray:
        """``rlnOverallFourierCompleteness`` ``[K]``."""
        return self.classes["rlnOverallFourierCompleteness"].to_numpy(dtype=np.float64)

    def class_counts(self) -> np.ndarray:
        """Particles per class ``[K]`` from the hard assignments (``rlnClassNumber``) of the data STAR.

        These differ slightly from ``distribution * n_particles``: the distribution sums the soft
        (probability-weighted) assignments.
        """
        if self.particles is None:
            raise Class2DError(f"{self.files.model_star}: the particles (data STAR) were not read")
        numbers = self.particles["rlnClassNumber"].to_numpy(dtype=np.int64)
        return np.bincount(numbers, minlength=self.n_classes + 1)[1 : self.n_classes + 1]

    def expected_counts(self) -> np.ndarray:
        """``rlnClassDistribution x n_particles`` ``[K]``: the particle number RELION's ranker uses."""
        return self.distribution * self.n_particles

    def estimated_resolution(self) -> np.ndarray:
        """Per-class resolution in Å as RELION's class ranker takes it.

        ``rlnEstimatedResolution`` where it is > 0; otherwise (files older than 3.0) RELION's fallback
        from the class's SSNR table (:func:`resolution_from_ssnr`).
        """
        res = self.resolution_A.copy()
        for i in np.nonzero(~(res > 0))[0]:
            table = self.spectrum(int(i) + 1)
            if "rlnSsnrMap" not in table.columns or "rlnAngstromResolution" not in table.columns:
                raise Class2DError(
                    f"{self.files.model_star}: class {i + 1} has no rlnEstimatedResolution and its "
                    "data_model_class table has no rlnSsnrMap / rlnAngstromResolution"
                )
            res[i] = resolution_from_ssnr(
                table["rlnSsnrMap"].to_numpy(dtype=np.float64),
                table["rlnAngstromResolution"].to_numpy(dtype=np.float64),
                self.angpix,
            )
        return res

    def spectrum(self, class_number: int) -> pd.DataFrame:
        """The per-class spectral table ``data_model_class_<k>`` (SSNR, tau2, orientability...)."""
        k = int(class_number)
        if not 1 <= k <= self.n_classes:
            raise Class2DError(f"{self.files.model_star}: class {k} out of range 1..{self.n_classes}")
        block = _read_block(self.files.model_star, f"model_class_{k}")
        if not isinstance(block, pd.DataFrame):
            raise Class2DError(f"{self.files.model_star}: data_model_class_{k} is not a table")
        return block

    # -- images --------------------------------------------------------------------------------------
    def reference_paths(self) -> list[tuple[int, Path]]:
        """(1-based index, absolute stack path) of each class average, from ``rlnReferenceImage``."""
        out = []
        for name in self.classes["rlnReferenceImage"]:
            try:
                index, fname = parse_image_name(str(name))
            except ValueError as exc:
                raise Class2DError(f"{self.files.model_star}: {exc}") from None
            out.append((max(index, 1), _resolve(fname, self.files.project_dir)))
        return out

    @property
    def averages(self) -> np.ndarray:
        """Class averages ``[K, box, box]``: a read-only memory map of the stack when the classes are
        slices 1..K of one file in order (the normal case), else an in-memory float32 array.

        The memory map keeps the file's dtype; use :meth:`class_averages` for float32 in any case.
        """
        if self._stack is None:
            self._load_stack()
        assert self._stack is not None
        if self._stack_index is None:
            return self._stack
        return np.asarray(self._stack[self._stack_index], dtype=np.float32)

    def class_averages(self) -> np.ndarray:
        """All class averages as float32 ``[K, box, box]`` (a copy)."""
        return np.asarray(self.averages, dtype=np.float32).copy()

    def class_average(self, class_number: int) -> np.ndarray:
        """One class average ``[box, box]`` float32; ``class_number`` is 1-based."""
        k = int(class_number)
        if not 1 <= k <= self.n_classes:
            raise Class2DError(f"{self.files.model_star}: class {k} out of range 1..{self.n_classes}")
        return np.asarray(self.averages[k - 1], dtype=np.float32).copy()

    def _load_stack(self) -> None:
        refs = self.reference_paths()
        paths = {p for _, p in refs}
        box = self.box_size
        if len(paths) == 1:
            path = next(iter(paths))
            stack = _open_stack(path)
            _check_stack(path, stack.shape, [i for i, _ in refs], box)
            indices = np.array([i - 1 for i, _ in refs], dtype=np.int64)
            if np.array_equal(indices, np.arange(len(refs))) and stack.shape[0] == len(refs):
                self._stack, self._stack_index = stack, None
            else:
                self._stack, self._stack_index = stack, indices
            return
        # Unusual: classes spread over several files (hand-made or edited model STAR files).
        images = np.empty((len(refs), box, box), dtype=np.float32)
        for n, (index, path) in enumerate(refs):
            stack = _open_stack(path)
            _check_stack(path, stack.shape, [index], box)
            images[n] = stack[index - 1]
        self._stack, self._stack_index = images, None


# ----------------------------------------------------------------------------------------------------
# reading


def read_class2d(
    path: str | os.PathLike,
    project_dir: str | os.PathLike | None = None,
    particles: bool = True,
    check_images: bool = True,
) -> Class2DResult:
    """Read a 2D classification result from a job directory or one of its STAR files (see module doc).

    ``particles=False`` skips the data STAR (useful when only the classes are needed and the particle
    file is huge). ``check_images`` checks now that the class-average stack exists and matches the
    model (box size, number of images); the pixels themselves are only mapped when first used.
    """
    files = find_class2d_files(path, project_dir)
    return read_class2d_files(files, particles=particles, check_images=check_images)


def read_class2d_files(
    files: Class2DFiles, particles: bool = True, check_images: bool = True
) -> Class2DResult:
    """Read the files found by :func:`find_class2d_files`."""
    model = files.model_star
    blocks = _read_star(model, ["model_general", "model_classes", "model_bodies"])
    if "model_bodies" in blocks:
        raise Class2DError(f"{model}: a multi-body refinement model, not a 2D classification")
    general = blocks.get("model_general")
    if not isinstance(general, dict) or not general:
        raise Class2DError(f"{model}: no data_model_general block (is this a _model.star file?)")
    missing = [lab for lab in _REQUIRED_GENERAL_LABELS if lab not in general]
    if missing:
        raise Class2DError(f"{model}: data_model_general lacks {', '.join(missing)}")
    ref_dim = int(general.get("rlnReferenceDimensionality", 2))
    if ref_dim != 2:
        raise Class2DError(f"{model}: rlnReferenceDimensionality is {ref_dim}; expected a 2D classification")
    classes = blocks.get("model_classes")
    if not isinstance(classes, pd.DataFrame):
        raise Class2DError(f"{model}: no data_model_classes table")
    classes = _normalise_classes(model, classes, float(general["rlnPixelSize"]))
    n_classes = int(general["rlnNrClasses"])
    if len(classes) != n_classes:
        raise Class2DError(
            f"{model}: rlnNrClasses is {n_classes} but data_model_classes has {len(classes)} rows"
        )
    dist = classes["rlnClassDistribution"].to_numpy(dtype=np.float64)
    if not np.isfinite(dist).all() or (dist < 0).any():
        raise Class2DError(f"{model}: rlnClassDistribution has negative or non-finite values")

    optimiser: dict[str, Any] = {}
    relion_version = None
    if files.optimiser_star is not None:
        opt = _read_block(files.optimiser_star, "optimiser_general")
        if not isinstance(opt, dict):
            raise Class2DError(f"{files.optimiser_star}: data_optimiser_general is not a list block")
        optimiser = opt
        relion_version = _relion_version(files.optimiser_star)

    result = Class2DResult(
        files=files,
        general=general,
        classes=classes,
        optimiser=optimiser,
        star_version=_star_version(model),
        relion_version=relion_version,
    )

    if particles:
        if files.data_star is None:
            raise Class2DError(f"{model}: no data STAR file found beside it (run_itNNN_data.star)")
        result.particles, result.optics = _read_particles(files.data_star, n_classes)
        n_optics = general.get("rlnNrOpticsGroups")
        if n_optics is not None and result.optics is not None and int(n_optics) != len(result.optics):
            raise Class2DError(
                f"{files.data_star}: {len(result.optics)} optics groups, but the model has "
                f"rlnNrOpticsGroups {int(n_optics)}"
            )

    if check_images:
        refs = result.reference_paths()
        by_file: dict[Path, list[int]] = {}
        for index, p in refs:
            by_file.setdefault(p, []).append(index)
        for p, indices in by_file.items():
            info = _header(p)
            _check_stack(p, info.shape, indices, result.box_size)
    return result


def find_class2d_files(path: str | os.PathLike, project_dir: str | os.PathLike | None = None) -> Class2DFiles:
    """Locate the model / optimiser / data STAR files of the iteration that ``path`` designates."""
    p = Path(path)
    if not p.is_absolute():
        base = Path(project_dir) if project_dir is not None else Path.cwd()
        if (base / p).exists():
            p = base / p
    if not p.exists():
        raise Class2DError(f"{path}: no such file or directory")
    p = p.resolve()
    given_project = Path(project_dir).resolve() if project_dir is not None else None

    if p.is_dir():
        model, optimiser, data, root, it = _last_iteration(p)
    else:
        root, it, kind = _split_name(p)
        sib = {k: p.parent / f"{root}_{k}.star" for k in ("optimiser", "model", "data")}
        optimiser = p if kind == "optimiser" else (sib["optimiser"] if sib["optimiser"].is_file() else None)
        model = sib["model"]
        data = p if kind == "data" else (sib["data"] if sib["data"].is_file() else None)
        if optimiser is not None and kind != "model":
            # The optimiser names its model and data files; follow them (a Select job's rank_optimiser.star
            # points at rank_model.star and rank_data.star, for example). A model STAR given by the user
            # is taken as it is, with its siblings.
            model, named_data = _files_named_by(optimiser, given_project)
            if kind != "data" and named_data is not None:
                data = named_data
        if not model.is_file():
            raise Class2DError(f"{p}: model STAR file {model.name} not found beside it")
    project = given_project if given_project is not None else _project_dir(model)
    return Class2DFiles(
        model_star=model,
        optimiser_star=optimiser,
        data_star=data,
        project_dir=project,
        iteration=it,
        root=root,
    )


def resolution_from_ssnr(ssnr: np.ndarray, resolution_A: np.ndarray, angpix: float) -> float:
    """RELION's class-ranker fallback resolution from a class's SSNR table (``findResolution``).

    The resolution (Å) of the shell before the first shell ``i >= 1`` whose SSNR drops below 1; if it
    never does, Nyquist (``2 x angpix``). Shell 0 is the DC term (999 Å in RELION's tables).
    """
    ssnr = np.asarray(ssnr, dtype=np.float64)
    res = np.asarray(resolution_A, dtype=np.float64)
    below = np.nonzero(ssnr[1:] < 1.0)[0]
    if below.size == 0:
        return 2.0 * float(angpix)
    return float(res[below[0]])  # index (first + 1) - 1


# ----------------------------------------------------------------------------------------------------
# helpers


def _last_iteration(job_dir: Path) -> tuple[Path, Path | None, Path | None, str, int]:
    """The files of the highest iteration in a job directory (ties: the latest continuation)."""
    found: dict[tuple[str, int], dict[str, Path]] = {}
    for entry in job_dir.iterdir():
        m = _ITER_FILE.match(entry.name)
        if m and entry.is_file():
            key = (m.group("root"), int(m.group("it")))
            found.setdefault(key, {})[m.group("kind")] = entry
    candidates = [(k, v) for k, v in found.items() if "model" in v]
    if not candidates:
        raise Class2DError(
            f"{job_dir}: no run_itNNN_model.star in this directory (not a finished Class2D job?)"
        )

    def rank(item: tuple[tuple[str, int], dict[str, Path]]) -> tuple:
        (root, it), kinds = item
        cts = [int(c) for c in _CT.findall(root)]
        return (it, "optimiser" in kinds, max(cts, default=-1), kinds["model"].stat().st_mtime_ns)

    (_, it), kinds = max(candidates, key=rank)
    model = kinds["model"]
    return model, kinds.get("optimiser"), kinds.get("data"), model.name[: -len("_model.star")], it


def _split_name(p: Path) -> tuple[str, int | None, str]:
    """(root, iteration or None, kind) of ``<root>_<kind>.star``; root keeps ``_itNNN``."""
    m = _ITER_FILE.match(p.name)
    if m is not None:
        return f"{m.group('root')}_it{m.group('it')}", int(m.group("it")), m.group("kind")
    for kind in ("optimiser", "model", "data"):
        if p.name.endswith(f"_{kind}.star"):
            return p.name[: -len(f"_{kind}.star")], None, kind
    raise Class2DError(
        f"{p}: not a 2D classification file (expected *_optimiser.star, *_model.star, *_data.star "
        "or a Class2D job directory)"
    )


def _files_named_by(optimiser: Path, project: Path | None) -> tuple[Path, Path | None]:
    """(model, data) STAR files named in an optimiser's ``data_optimiser_general``."""
    opt = _read_block(optimiser, "optimiser_general")
    if not isinstance(opt, dict):
        raise Class2DError(f"{optimiser}: data_optimiser_general is not a list block")
    bases = _bases(optimiser, project)
    found: dict[str, Path | None] = {}
    for label in ("rlnModelStarFile", "rlnExperimentalDataStarFile"):
        name = str(opt.get(label, ""))
        if name in ("", "None"):
            found[label] = None
            continue
        found[label] = _find(name, bases, optimiser.parent)
        if found[label] is None:
            raise Class2DError(f"{optimiser}: {label} {name} not found")
    model = found["rlnModelStarFile"]
    if model is None:
        raise Class2DError(f"{optimiser}: no rlnModelStarFile in data_optimiser_general")
    return model, found["rlnExperimentalDataStarFile"]


def _bases(star: Path, project: Path | None) -> list[Path]:
    """Directories a RELION-relative name may be relative to, most likely first."""
    bases = [project] if project is not None else [Path.cwd()]
    bases += list(star.parent.parents)[:6]
    return bases


def _find(name: str, bases: list[Path], sibling_dir: Path) -> Path | None:
    p = Path(name)
    if p.is_absolute():
        return p if p.exists() else None
    for base in bases:
        if (base / p).exists():
            return (base / p).resolve()
    if (sibling_dir / p.name).exists():
        return (sibling_dir / p.name).resolve()
    return None


def _project_dir(model: Path) -> Path:
    """The directory the model's ``rlnReferenceImage`` names are relative to (cwd if undecidable)."""
    try:
        classes = _read_block(model, "model_classes")
        first = str(classes["rlnReferenceImage"].iloc[0])  # type: ignore[index]
        _, fname = parse_image_name(first)
    except (Class2DError, KeyError, IndexError, ValueError, TypeError):
        return Path.cwd()
    rel = Path(fname)
    if rel.is_absolute():
        return Path.cwd()
    for base in [Path.cwd(), *list(model.parent.parents)[:6]]:
        if (base / rel).exists():
            return base.resolve()
    # Class averages missing or moved: RELION writes job-relative paths, so "Class2D/job012/x" means
    # the project is two levels above the job directory.
    depth = len(rel.parts) - 1
    parents = [model.parent, *model.parent.parents]
    return parents[depth].resolve() if 0 < depth < len(parents) else model.parent.resolve()


def _resolve(name: str, project: Path) -> Path:
    p = Path(name)
    return p if p.is_absolute() else project / p


def _normalise_classes(model: Path, classes: pd.DataFrame, angpix: float) -> pd.DataFrame:
    missing = [lab for lab in _REQUIRED_CLASS_LABELS if lab not in classes.columns]
    if missing:
        raise Class2DError(f"{model}: data_model_classes lacks {', '.join(missing)}")
    df = classes.copy()
    if "rlnAccuracyTranslationsAngst" not in df.columns:
        if "rlnAccuracyTranslations" not in df.columns:
            raise Class2DError(
                f"{model}: data_model_classes has neither rlnAccuracyTranslationsAngst nor rlnAccuracyTranslations"
            )
        # Pre-3.1 files give pixels; RELION's reader multiplies by the pixel size (ml_model.cpp readStar).
        df["rlnAccuracyTranslationsAngst"] = df["rlnAccuracyTranslations"].astype(np.float64) * angpix
    for label in ("rlnEstimatedResolution", "rlnOverallFourierCompleteness"):
        if label not in df.columns:
            df[label] = 0.0  # RELION's readStar default for older files
    return df


def _read_particles(data: Path, n_classes: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    blocks = _read_star(data, ["optics", "particles"])
    if "particles" in blocks:
        parts = blocks["particles"]
        optics = blocks.get("optics")
    else:
        # Pre-3.1 data STAR: a single unnamed block, no optics table.
        old = _read_star(data, [""])
        if "" not in old:
            raise Class2DError(f"{data}: no data_particles block")
        parts, optics = old[""], None
    if not isinstance(parts, pd.DataFrame):
        raise Class2DError(f"{data}: data_particles is not a table")
    if optics is not None and not isinstance(optics, pd.DataFrame):
        raise Class2DError(f"{data}: data_optics is not a table")
    if "rlnClassNumber" not in parts.columns:
        raise Class2DError(f"{data}: particles have no rlnClassNumber (not a classification result)")
    numbers = parts["rlnClassNumber"].to_numpy()
    if len(numbers):
        if not np.issubdtype(numbers.dtype, np.integer):
            raise Class2DError(f"{data}: rlnClassNumber values are not integers")
        lo, hi = int(numbers.min()), int(numbers.max())
        if lo < 1 or hi > n_classes:
            bad = lo if lo < 1 else hi
            raise Class2DError(
                f"{data}: rlnClassNumber {bad} outside 1..{n_classes} (the model has {n_classes} classes)"
            )
    return parts, optics


def _check_stack(path: Path, shape: tuple[int, ...], indices: list[int], box: int) -> None:
    n = shape[0]
    ny, nx = shape[-2], shape[-1]
    if (ny, nx) != (box, box):
        raise Class2DError(
            f"{path}: class averages are {nx} x {ny} px, the model says rlnOriginalImageSize {box}"
        )
    if indices and max(indices) > n:
        raise Class2DError(f"{path}: has {n} images, but the model refers to image {max(indices)}")


def _header(path: Path):
    try:
        return read_header(path)
    except MrcError as exc:
        raise Class2DError(str(exc)) from None


def _open_stack(path: Path) -> np.ndarray:
    try:
        stack = open_stack(path)
    except MrcError as exc:
        raise Class2DError(str(exc)) from None
    return stack


def _read_star(path: Path, blocks: list[str]) -> dict[str, Any]:
    try:
        return read_star(path, blocks)
    except StarError as exc:
        raise Class2DError(str(exc)) from None


def _read_block(path: Path, name: str) -> Any:
    try:
        return read_block(path, name)
    except StarError as exc:
        raise Class2DError(str(exc)) from None


def _star_version(path: Path) -> int | None:
    """The first ``# version NNNNN`` number of a STAR file (read from its first 4 kB)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    m = _VERSION_LINE.search(head)
    return int(m.group(1)) if m else None


def _relion_version(path: Path) -> str | None:
    """``3.1.3`` from the ``# RELION optimiser; version 3.1.3`` line RELION puts atop optimiser files."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return None
    m = _RELION_LINE.search(head)
    return m.group(1).decode("ascii", "replace") if m else None
