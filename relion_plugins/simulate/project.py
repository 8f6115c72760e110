"""A small RELION project of simulated micrographs with ground truth, for picker benchmarks and demos.

Layout (all names relative to the project directory, as RELION writes them)::

    default_pipeline.star                       MotionCorr/job002 and CtfFind/job003, job counter 4
    MotionCorr/job002/Movies/<mic>.mrc           the micrographs (float32, or float16 on request)
    MotionCorr/job002/corrected_micrographs.star optics + micrographs
    CtfFind/job003/micrographs_ctf.star          optics + micrographs with the true CTF parameters
    truth/particles.star                         all true particles: rlnMicrographName, X, Y
    truth/Movies/<mic>_truth.star                per-micrograph coordinate files (RELION format)
    truth/truth.star                             coordinate list (data_coordinate_files) for them
    truth/junk.star                              junk centres and boxes (not particles), by kind

Truth columns use RELION labels; the junk table adds ``rpJunkKind``, ``rpJunkRadius`` and ``rpBoxX0/Y0/X1/Y1``
(pixels), which RELION would warn about and keep, but nothing of RELION reads this file.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..relion.coords import coordinate_path, write_coordinate_list, write_coordinates
from ..relion.mrc import write_mrc
from ..relion.nodes import node_label, star_version_number
from ..relion.star import read_star, write_star
from .micrograph import (
    JunkConfig,
    MicrographConfig,
    SimulatedMicrograph,
    projection_bank,
    simulate_micrograph,
)

__all__ = ["SimulatedProject", "make_project", "split_names", "write_split"]

MOTIONCORR_JOB = "MotionCorr/job002/"
CTFFIND_JOB = "CtfFind/job003/"
MICROGRAPHS_STAR = CTFFIND_JOB + "micrographs_ctf.star"
CORRECTED_STAR = MOTIONCORR_JOB + "corrected_micrographs.star"


@dataclass
class SimulatedProject:
    """Where everything of a simulated project is, plus the truth in memory (pixels, x = column)."""

    project_dir: Path
    micrographs_star: Path  # CtfFind/job003/micrographs_ctf.star (absolute)
    micrograph_names: list[str]  # rlnMicrographName values, relative to project_dir
    truth_star: Path  # truth/particles.star
    truth_list_star: Path  # truth/truth.star (coordinate list)
    junk_star: Path  # truth/junk.star
    pipeline_star: Path
    angpix: float
    diameter_A: float
    relion_version: int
    truth: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [n, 2] (x, y)
    junk: dict[str, list] = field(default_factory=dict)  # name -> list[JunkItem]
    defocus: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # U, V, angle

    @property
    def diameter_px(self) -> float:
        """Particle diameter in micrograph pixels."""
        return self.diameter_A / self.angpix

    @property
    def n_particles(self) -> int:
        """Total number of true particles."""
        return int(sum(len(v) for v in self.truth.values()))

    def micrograph_path(self, name: str) -> Path:
        """Absolute path of a micrograph given its rlnMicrographName."""
        return self.project_dir / name

    def split(self, test_fraction: float = 0.25, seed: int = 0) -> tuple[list[str], list[str]]:
        """(train, test) micrograph names; see :func:`split_names`."""
        return split_names(self.micrograph_names, test_fraction, seed)


def split_names(
    names: Sequence[str], test_fraction: float = 0.25, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split micrograph names into (train, test), deterministically and by name only.

    Each name is ranked by a CRC32 hash of ``seed:name``; the lowest ``round(test_fraction * n)`` (at least
    one when there are two or more names and the fraction is > 0) go to test. The split therefore does not
    depend on the order of ``names``, and is reproducible across runs and machines.
    """
    names = list(dict.fromkeys(str(n) for n in names))
    n_test = int(round(test_fraction * len(names)))
    if test_fraction > 0 and len(names) >= 2:
        n_test = min(max(n_test, 1), len(names) - 1)
    ranked = sorted(names, key=lambda n: (zlib.crc32(f"{seed}:{n}".encode()), n))
    test = set(ranked[:n_test])
    return [n for n in names if n not in test], [n for n in names if n in test]


def write_split(
    project: SimulatedProject,
    test_fraction: float = 0.25,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Write train/test subsets of the micrographs STAR and of the truth to ``out_dir`` (default
    ``<project>/splits``); names stay relative to the project directory. Returns the paths by key
    ``micrographs_train``, ``micrographs_test``, ``particles_train``, ``particles_test``."""
    out = Path(out_dir) if out_dir is not None else project.project_dir / "splits"
    train, test = project.split(test_fraction, seed)
    blocks = read_star(project.micrographs_star)
    truth = read_star(project.truth_star)[""]
    version = star_version_number(project.relion_version)
    paths: dict[str, Path] = {}
    for part, names in (("train", train), ("test", test)):
        mics = blocks["micrographs"]
        sub = {"optics": blocks["optics"], "micrographs": mics[mics["rlnMicrographName"].isin(names)]}
        paths[f"micrographs_{part}"] = out / f"micrographs_{part}.star"
        write_star(
            paths[f"micrographs_{part}"], {k: v.reset_index(drop=True) for k, v in sub.items()}, version
        )
        paths[f"particles_{part}"] = out / f"particles_{part}.star"
        rows = truth[truth["rlnMicrographName"].isin(names)].reset_index(drop=True)
        write_star(paths[f"particles_{part}"], {"": rows}, version)
    return paths


def make_project(
    project_dir: str | os.PathLike,
    n_micrographs: int = 8,
    shape: tuple[int, int] = (1024, 1024),
    angpix: float = 4.0,
    diameter_A: float | None = None,
    seed: int = 0,
    particle: str = "globular",
    junk: str | JunkConfig = "default",
    snr: float | tuple[float, float] = 0.1,
    float16: bool = False,
    relion_version: int = 5,
    original_angpix: float | None = None,
    threads: int = 1,
    prefix: str = "mic",
    **config: object,
) -> SimulatedProject:
    """Simulate ``n_micrographs`` and write them as a RELION project with ground truth (see module doc).

    Micrograph ``i`` uses the seed ``[seed, i]``, so it does not depend on ``n_micrographs`` or ``threads``.
    ``original_angpix`` is the movie pixel size written to ``rlnMicrographOriginalPixelSize`` (default
    ``angpix / 4``: a K3 micrograph binned 4x). Further keywords go to :class:`MicrographConfig`
    (``n_particles``, ``crowding``, ``defocus_um``, ``particle`` phantom seed...).
    """
    if relion_version not in (4, 5):
        raise ValueError(f"relion_version must be 4 or 5, not {relion_version}")
    proj = Path(project_dir).resolve()
    proj.mkdir(parents=True, exist_ok=True)
    cfg = MicrographConfig(
        shape=tuple(shape), angpix=float(angpix), particle=str(particle), diameter_A=diameter_A, junk=junk, snr=snr,
        **config,
    )  # fmt: skip
    # Build the projection bank once, before any thread needs it.
    projection_bank(cfg.particle, cfg.angpix, cfg.bank_size, cfg.phantom_seed, cfg.diameter_A)
    names = [f"{MOTIONCORR_JOB}Movies/{prefix}{i + 1:03d}.mrc" for i in range(n_micrographs)]

    def one(i: int) -> SimulatedMicrograph:
        sim = simulate_micrograph(cfg, np.random.default_rng([seed, i]))
        data = sim.image.astype(np.float16) if float16 else sim.image
        write_mrc(proj / names[i], data, sim.angpix)
        sim.image = np.empty((0, 0), np.float32)  # keep memory flat over many micrographs
        sim.junk_mask = np.empty((0, 0), bool)
        return sim

    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            sims = list(pool.map(one, range(n_micrographs)))
    else:
        sims = [one(i) for i in range(n_micrographs)]

    version = star_version_number(relion_version)
    rng = np.random.default_rng([seed, 1_000_003])  # CTF-fit quality columns only
    optics = _optics_table(cfg, original_angpix)
    mics = pd.DataFrame(
        {
            "rlnMicrographName": pd.Series(names, dtype=object),
            "rlnOpticsGroup": np.ones(n_micrographs, dtype=np.int64),
        }
    )
    write_star(proj / CORRECTED_STAR, {"optics": optics, "micrographs": mics}, version)
    ctf = mics.copy()
    ctf["rlnCtfImage"] = [
        CTFFIND_JOB + n[len(MOTIONCORR_JOB) :].rsplit(".", 1)[0] + ".ctf:mrc" for n in names
    ]
    ctf["rlnDefocusU"] = [s.defocus_u for s in sims]
    ctf["rlnDefocusV"] = [s.defocus_v for s in sims]
    ctf["rlnCtfAstigmatism"] = [abs(s.defocus_u - s.defocus_v) for s in sims]
    ctf["rlnDefocusAngle"] = [s.defocus_angle for s in sims]
    ctf["rlnCtfFigureOfMerit"] = rng.uniform(0.08, 0.3, n_micrographs)
    # A fit cannot resolve beyond Nyquist of the movie; typical values for good data are 3-6 Å.
    ctf["rlnCtfMaxResolution"] = np.maximum(
        rng.uniform(3.0, 6.0, n_micrographs), 2.0 * float(optics.iloc[0, 2])
    )
    write_star(proj / MICROGRAPHS_STAR, {"optics": optics, "micrographs": ctf}, version)

    # Ground truth.
    truth_dir = proj / "truth"
    rows, junk_rows, pairs = [], [], []
    for name, sim in zip(names, sims):
        xy = sim.particles
        rows.append(
            pd.DataFrame({"rlnMicrographName": name, "rlnCoordinateX": xy[:, 0], "rlnCoordinateY": xy[:, 1]})
        )
        cpath = coordinate_path(truth_dir, name, "truth")
        write_coordinates(cpath, pd.DataFrame({"rlnCoordinateX": xy[:, 0], "rlnCoordinateY": xy[:, 1]}))
        pairs.append((name, cpath.relative_to(proj).as_posix()))
        for j in sim.junk:
            junk_rows.append((name, j.x, j.y, j.kind, j.radius, *j.bbox))
        r = 0.5 * sim.diameter_px
        for x, y in sim.aggregates:
            junk_rows.append((name, x, y, "aggregate_particle", r, x - r, y - r, x + r, y + r))
    truth = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["rlnMicrographName"])
    truth["rlnMicrographName"] = truth["rlnMicrographName"].astype(object)
    write_star(truth_dir / "particles.star", {"": truth}, version)
    truth_list = write_coordinate_list(truth_dir, pairs, name="truth")
    junk_cols = ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rpJunkKind", "rpJunkRadius"]
    junk_cols += ["rpBoxX0", "rpBoxY0", "rpBoxX1", "rpBoxY1"]
    junk_df = pd.DataFrame(junk_rows, columns=junk_cols)
    for c in ("rlnMicrographName", "rpJunkKind"):
        junk_df[c] = junk_df[c].astype(object)
    write_star(truth_dir / "junk.star", {"junk": junk_df}, version)

    pipeline = proj / "default_pipeline.star"
    write_pipeline(pipeline, relion_version)

    return SimulatedProject(
        project_dir=proj,
        micrographs_star=proj / MICROGRAPHS_STAR,
        micrograph_names=names,
        truth_star=truth_dir / "particles.star",
        truth_list_star=truth_list,
        junk_star=truth_dir / "junk.star",
        pipeline_star=pipeline,
        angpix=float(angpix),
        diameter_A=float(sims[0].diameter_A) if sims else float(diameter_A or 0.0),
        relion_version=relion_version,
        truth={n: s.particles for n, s in zip(names, sims)},
        junk={n: s.junk for n, s in zip(names, sims)},
        defocus={n: (s.defocus_u, s.defocus_v, s.defocus_angle) for n, s in zip(names, sims)},
    )


def _optics_table(cfg: MicrographConfig, original_angpix: float | None) -> pd.DataFrame:
    orig = float(original_angpix) if original_angpix else cfg.angpix / 4.0
    return pd.DataFrame(
        {
            "rlnOpticsGroupName": pd.Series(["opticsGroup1"], dtype=object),
            "rlnOpticsGroup": [1],
            "rlnMicrographOriginalPixelSize": [orig],
            "rlnVoltage": [float(cfg.voltage_kV)],
            "rlnSphericalAberration": [float(cfg.cs_mm)],
            "rlnAmplitudeContrast": [float(cfg.amplitude_contrast)],
            "rlnMicrographPixelSize": [float(cfg.angpix)],
        }
    )


def write_pipeline(path: str | os.PathLike, relion_version: int = 5) -> None:
    """``default_pipeline.star`` for a project that ran MotionCorr/job002 and CtfFind/job003.

    RELION reads the job counter (the next job gets number 4) and the processes/nodes/edges tables; the
    ``# version`` header (30001 or 50001) also tells our jobs which node labels the project needs.
    """
    version = star_version_number(relion_version)
    processes = pd.DataFrame(
        {
            "rlnPipeLineProcessName": pd.Series([MOTIONCORR_JOB, CTFFIND_JOB], dtype=object),
            "rlnPipeLineProcessAlias": pd.Series(["None", "None"], dtype=object),
            "rlnPipeLineProcessTypeLabel": pd.Series(
                ["relion.motioncorr.own", "relion.ctffind.ctffind4"], dtype=object
            ),
            "rlnPipeLineProcessStatusLabel": pd.Series(["Succeeded", "Succeeded"], dtype=object),
        }
    )
    nodes = pd.DataFrame(
        {
            "rlnPipeLineNodeName": pd.Series([CORRECTED_STAR, MICROGRAPHS_STAR], dtype=object),
            "rlnPipeLineNodeTypeLabel": pd.Series(
                [
                    node_label("micrographs", relion_version, "motioncorr"),
                    node_label("micrographs", relion_version, "ctf"),
                ],
                dtype=object,
            ),
        }
    )
    if relion_version >= 5:
        nodes["rlnPipeLineNodeTypeLabelDepth"] = [1, 1]
    inputs = pd.DataFrame(
        {
            "rlnPipeLineEdgeFromNode": pd.Series([CORRECTED_STAR], dtype=object),
            "rlnPipeLineEdgeProcess": pd.Series([CTFFIND_JOB], dtype=object),
        }
    )
    outputs = pd.DataFrame(
        {
            "rlnPipeLineEdgeProcess": pd.Series([MOTIONCORR_JOB, CTFFIND_JOB], dtype=object),
            "rlnPipeLineEdgeToNode": pd.Series([CORRECTED_STAR, MICROGRAPHS_STAR], dtype=object),
        }
    )
    write_star(
        path,
        {
            "pipeline_general": {"rlnPipeLineJobCounter": 4},
            "pipeline_processes": processes,
            "pipeline_nodes": nodes,
            "pipeline_input_edges": inputs,
            "pipeline_output_edges": outputs,
        },
        version,
    )
