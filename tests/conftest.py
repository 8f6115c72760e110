"""Fixtures shared by several test files."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from relion_plugins.relion.star import read_star


@dataclass
class RealClass2D:
    """A simulated project with Debian RELION 3.1's extraction (Extract/job004) and 2D classification
    (Class2D/job005, K=3, 4 iterations) run on its true particles."""

    root: Path
    n_extracted: int
    refine_seconds: float


@pytest.fixture(scope="session")
def real_class2d(tmp_path_factory) -> RealClass2D:
    """One real ``relion_refine`` 2D run (~15 s on 2 cores), shared by every test that needs one."""
    if shutil.which("relion_refine") is None or shutil.which("relion_preprocess") is None:
        pytest.skip("Debian RELION not installed")
    import time

    from relion_plugins.simulate.project import make_project

    proj = make_project(
        tmp_path_factory.mktemp("class2d") / "proj", n_micrographs=3, shape=(768, 768), angpix=3.0, seed=7,
        junk="light", snr=0.5, relion_version=4, n_particles=(70, 100), bank_size=24,
    )  # fmt: skip
    root = proj.project_dir
    run = dict(cwd=root, capture_output=True, text=True)
    extract = [
        "relion_preprocess", "--i", "CtfFind/job003/micrographs_ctf.star", "--coord_dir", "truth/",
        "--coord_suffix", "_truth.star", "--part_star", "Extract/job004/particles.star",
        "--part_dir", "Extract/job004/", "--extract", "--extract_size", "96", "--scale", "64",
        "--norm", "--bg_radius", "24", "--invert_contrast",
    ]  # fmt: skip
    result = subprocess.run(extract, timeout=120, **run)
    assert result.returncode == 0, result.stderr[-2000:]
    n_extracted = len(read_star(root / "Extract/job004/particles.star")["particles"])
    (root / "Class2D/job005").mkdir(parents=True)
    refine = [
        "relion_refine", "--i", "Extract/job004/particles.star", "--o", "Class2D/job005/run", "--K", "3",
        "--iter", "4", "--tau2_fudge", "2", "--particle_diameter", "180", "--ctf", "--flatten_solvent",
        "--zero_mask", "--oversampling", "1", "--psi_step", "12", "--offset_range", "5", "--offset_step", "2",
        "--norm", "--scale", "--j", "2", "--pool", "30", "--dont_combine_weights_via_disc", "--random_seed", "1",
    ]  # fmt: skip
    t0 = time.perf_counter()
    result = subprocess.run(refine, timeout=180, **run)
    elapsed = time.perf_counter() - t0
    assert result.returncode == 0, result.stderr[-2000:]
    return RealClass2D(root, n_extracted, elapsed)
