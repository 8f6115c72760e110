"""Class ranker + %/Res selection (rp-rank-select) on real RELION 2D classifications of held-out data.

For each held-out set (particle shapes and junk mixes the default weights never saw: the ``ring``
phantom and the ribosome / spliceosome maps; junk from the *micrograph* simulator, not the class
simulator used in training):

1. simulate micrographs (``relion_plugins.simulate.make_project``);
2. pick: every true particle plus junk picks (ice / contaminant / aggregate centres, points on carbon,
   empty ice, off-centre picks 0.4-0.6 diameters away from a particle); a pick is *true* when a true
   particle lies within 0.2 diameters of it. The pick kind rides along in ``rlnAutopickFigureOfMerit``;
3. extract with Debian ``relion_preprocess`` and classify with Debian RELION 3.1 ``relion_refine`` (2D);
4. run ``rp-rank-select`` on ``run_itNNN_data.star`` exactly as RELION runs an External job, with its
   default thresholds, and compare with the truth: selected-particle FPR (junk particles selected / all
   junk particles) and FNR (true particles not selected / all true particles); ROC AUC of the class scores,
   good classes being those whose particles are > 50 % true;
5. time the job on 100 classes (a Class2D-like job built from real classes, files read included).

    python benchmarks/rank_select.py                 # everything, writes docs/benchmarks.md
    python benchmarks/rank_select.py --prepare-only  # only steps 1-3 (cached in --work)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relion_plugins.relion.coords import coordinate_path, write_coordinates  # noqa: E402
from relion_plugins.relion.star import read_star  # noqa: E402

KIND_CODES = {"true": 0, "ice": 1, "contaminant": 2, "aggregate": 3, "carbon": 4, "empty": 5, "offcentre": 6}


@dataclass(frozen=True)
class BenchSet:
    """One held-out data set and its 2D classification settings."""

    name: str
    particle: str
    angpix: float  # micrograph pixel size
    extract: int  # extraction box (px of the micrograph)
    junk: str
    n_micrographs: int
    k: int
    iters: int
    seed: int
    junk_share: float = 0.4  # junk picks / all picks (roughly)


SETS = (
    BenchSet("ring-default", "ring", 3.0, 96, "default", 6, 8, 8, 101),
    BenchSet("ribosome-heavy", "ribosome", 4.5, 80, "heavy", 8, 8, 8, 202, 0.5),
    BenchSet("spliceosome-light", "spliceosome", 4.5, 84, "light", 8, 8, 8, 303, 0.3),
    BenchSet("ring-heavy", "ring", 3.0, 96, "heavy", 6, 10, 8, 404, 0.55),
)
OUT_BOX = 64
JOB_ARGS: list[str] = []  # extra job arguments for every run (--model)


def make_picks(sim, rng: np.random.Generator, junk_share: float) -> dict[str, pd.DataFrame]:
    """Per-micrograph pick tables (x, y, kind code) mixing every true particle with junk picks."""
    from relion_plugins.relion.star import read_star as _read

    junk = _read(sim.junk_star)["junk"]
    d = sim.diameter_px
    out = {}
    for name in sim.micrograph_names:
        truth = sim.truth[name]
        rows = [(x, y, KIND_CODES["true"]) for x, y in truth]
        n_junk_target = int(round(len(truth) * junk_share / (1 - junk_share)))
        jr = junk[junk["rlnMicrographName"] == name]
        junk_rows = []
        for _, j in jr.iterrows():
            kind = str(j["rpJunkKind"])
            if kind in ("ice", "contaminant", "aggregate"):
                junk_rows.append((j["rlnCoordinateX"], j["rlnCoordinateY"], KIND_CODES[kind]))
            elif kind == "carbon":
                for _ in range(4):
                    x = rng.uniform(j["rpBoxX0"], j["rpBoxX1"])
                    y = rng.uniform(j["rpBoxY0"], j["rpBoxY1"])
                    junk_rows.append((x, y, KIND_CODES["carbon"]))
        ny, nx = 768, 768
        rest = max(0, n_junk_target - len(junk_rows))
        n_off = rest // 3
        for _ in range(n_off):
            if len(truth) == 0:
                break
            x0, y0 = truth[rng.integers(len(truth))]
            a = rng.uniform(0, 2 * np.pi)
            r = rng.uniform(0.4, 0.6) * d
            junk_rows.append((x0 + r * np.cos(a), y0 + r * np.sin(a), KIND_CODES["offcentre"]))
        tries = 0
        while len(junk_rows) < n_junk_target and tries < 2000:
            tries += 1
            x, y = rng.uniform(0.6 * d, nx - 0.6 * d), rng.uniform(0.6 * d, ny - 0.6 * d)
            if len(truth) and np.hypot(truth[:, 0] - x, truth[:, 1] - y).min() < 1.0 * d:
                continue
            junk_rows.append((x, y, KIND_CODES["empty"]))
        rows += junk_rows
        df = pd.DataFrame(rows, columns=["rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"])
        margin = 0.5 * 96
        df = df[
            (df.rlnCoordinateX > margin)
            & (df.rlnCoordinateX < nx - margin)
            & (df.rlnCoordinateY > margin)
            & (df.rlnCoordinateY < ny - margin)
        ]
        # A pick is true when a true particle lies within 0.2 diameters (whatever we meant it to be).
        if len(truth):
            dist = np.hypot(
                df.rlnCoordinateX.to_numpy()[:, None] - truth[None, :, 0],
                df.rlnCoordinateY.to_numpy()[:, None] - truth[None, :, 1],
            ).min(axis=1)
            df = df.assign(rpIsTrue=(dist < 0.2 * d).astype(int))
        else:
            df = df.assign(rpIsTrue=0)
        out[name] = df.reset_index(drop=True)
    return out


def prepare_set(bs: BenchSet, work: Path, threads: int = 2) -> Path:
    """Simulate, pick, extract and classify one set; returns the project dir (cached: skips done steps)."""
    from relion_plugins.simulate.project import make_project

    proj = work / bs.name
    done = proj / "Class2D/job005" / f"run_it{bs.iters:03d}_data.star"
    if done.exists():
        return proj
    if proj.exists():
        shutil.rmtree(proj)
    rng = np.random.default_rng(bs.seed)
    t0 = time.perf_counter()
    sim = make_project(
        proj, n_micrographs=bs.n_micrographs, shape=(768, 768), angpix=bs.angpix, seed=bs.seed,
        particle=bs.particle, junk=bs.junk, snr=(0.3, 0.6), relion_version=4, n_particles=(60, 90),
        bank_size=48, threads=threads,
    )  # fmt: skip
    picks = make_picks(sim, rng, bs.junk_share)
    for name, df in picks.items():
        write_coordinates(coordinate_path(proj / "picks", name, "pick"), df[list(df.columns[:3])])
        df.assign(rlnMicrographName=name).to_csv(
            proj / "picks" / (Path(name).stem + "_truth.csv"), index=False
        )
    print(f"[{bs.name}] simulated {len(picks)} micrographs in {time.perf_counter() - t0:.0f} s", flush=True)
    run = dict(cwd=proj, capture_output=True, text=True)
    scale = OUT_BOX
    bg = int(0.375 * OUT_BOX)
    extract = [
        "relion_preprocess", "--i", "CtfFind/job003/micrographs_ctf.star", "--coord_dir", "picks/",
        "--coord_suffix", "_pick.star", "--part_star", "Extract/job004/particles.star",
        "--part_dir", "Extract/job004/", "--extract", "--extract_size", str(bs.extract), "--scale", str(scale),
        "--norm", "--bg_radius", str(bg), "--invert_contrast",
    ]  # fmt: skip
    res = subprocess.run(extract, timeout=600, **run)
    if res.returncode != 0:
        raise RuntimeError(f"relion_preprocess failed: {res.stderr[-2000:]}")
    n = len(read_star(proj / "Extract/job004/particles.star")["particles"])
    (proj / "Class2D/job005").mkdir(parents=True, exist_ok=True)
    mask_A = 1.15 * sim.diameter_A
    refine = [
        "relion_refine", "--i", "Extract/job004/particles.star", "--o", "Class2D/job005/run", "--K", str(bs.k),
        "--iter", str(bs.iters), "--tau2_fudge", "2", "--particle_diameter", f"{mask_A:.0f}", "--ctf",
        "--flatten_solvent", "--zero_mask", "--oversampling", "1", "--psi_step", "12", "--offset_range", "5",
        "--offset_step", "2", "--norm", "--scale", "--j", str(threads), "--pool", "30",
        "--dont_combine_weights_via_disc", "--random_seed", str(bs.seed),
    ]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(refine, timeout=3600, **run)
    if res.returncode != 0:
        raise RuntimeError(f"relion_refine failed: {res.stderr[-2000:]}")
    elapsed = time.perf_counter() - t0
    (proj / "refine_seconds.json").write_text(json.dumps({"seconds": elapsed, "n_particles": n}))
    print(f"[{bs.name}] relion_refine: {n} particles, K={bs.k}, {bs.iters} it: {elapsed:.0f} s", flush=True)
    return proj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/rank_select_bench", help="cache directory (default: %(default)s)")
    ap.add_argument("--prepare-only", action="store_true", help="only simulate, extract and classify")
    ap.add_argument("--sets", nargs="*", default=None, help="names of the sets to run (default: all)")
    ap.add_argument("--j", type=int, default=2, help="threads for relion_refine (default: %(default)s)")
    ap.add_argument("--no-page", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--model", default="", help="ranker weights for the job (default: the shipped ones)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sets = [s for s in SETS if args.sets is None or s.name in args.sets]
    projects = [prepare_set(s, work, args.j) for s in sets]
    if args.prepare_only:
        return 0
    if args.model:
        JOB_ARGS.extend(["--model", str(Path(args.model).resolve())])
    return evaluate(sets, projects, work, write_page=not args.no_page)


def particle_truth(proj: Path, data: pd.DataFrame) -> np.ndarray:
    """Per particle of a data STAR: 1 if its pick was a true particle, else 0 (nearest pick, same micrograph)."""
    picks = pd.concat(
        [pd.read_csv(f) for f in sorted((proj / "picks").glob("*_truth.csv"))], ignore_index=True
    )
    out = np.zeros(len(data), dtype=np.int64)
    for name, idx in data.groupby("rlnMicrographName").groups.items():
        p = picks[picks["rlnMicrographName"] == name]
        if p.empty:
            continue
        d = data.loc[idx]
        dist = np.hypot(
            d.rlnCoordinateX.to_numpy()[:, None] - p.rlnCoordinateX.to_numpy()[None],
            d.rlnCoordinateY.to_numpy()[:, None] - p.rlnCoordinateY.to_numpy()[None],
        )
        nearest = dist.argmin(axis=1)
        if dist.min(axis=1).max() > 2.0:
            raise RuntimeError(f"{proj}: an extracted particle matches no pick")
        out[np.asarray([data.index.get_loc(i) for i in idx])] = p.rpIsTrue.to_numpy()[nearest]
    return out


def run_job(proj: Path, data_star: str, job: str, extra: list[str] | None = None) -> float:
    """Run rp-rank-select as RELION would; returns the wall time."""
    from relion_plugins.cli import run_external_like_relion
    from relion_plugins.relion.external import SUCCESS

    if (proj / job).exists():
        shutil.rmtree(proj / job)
    t0 = time.perf_counter()
    marker = run_external_like_relion(
        proj, job, "rp-rank-select", ["--in_parts", data_star, *JOB_ARGS, *(extra or [])]
    )
    wall = time.perf_counter() - t0
    if marker != SUCCESS:
        raise RuntimeError(f"rp-rank-select failed: {(proj / job / 'run.err').read_text()[-2000:]}")
    return wall


def evaluate_set(bs: BenchSet, proj: Path) -> dict:
    from relion_plugins.rank.training import roc_auc

    data_star = f"Class2D/job005/run_it{bs.iters:03d}_data.star"
    wall = run_job(proj, data_star, "External/job006/")
    data = read_star(proj / data_star)["particles"]
    truth = particle_truth(proj, data)
    model = read_star(proj / "External/job006/rank_model.star")["model_classes"]
    sel = read_star(proj / "External/job006/particles.star")["particles"]
    selected_names = set(sel["rlnImageName"])
    is_sel = data["rlnImageName"].isin(selected_names).to_numpy()
    cls = data["rlnClassNumber"].to_numpy()
    k = len(model)
    counts = np.bincount(cls, minlength=k + 1)[1:]
    true_frac = np.bincount(cls, weights=truth, minlength=k + 1)[1:] / np.maximum(counts, 1)
    score = model["rlnClassScore"].to_numpy()
    pres = model["rlnParticleFigureOfMerit"].to_numpy()
    # the same selection without the duplicate removal: how much of the FPR that step buys
    run_job(proj, data_star, "External/job007/", ["--remove_duplicates", "-1"])
    raw = read_star(proj / "External/job007/particles.star")["particles"]
    raw_sel = data["rlnImageName"].isin(set(raw["rlnImageName"])).to_numpy()
    scored = score > -999
    good = true_frac > 0.5
    return {
        "set": bs.name,
        "n_particles": int(len(data)),
        "n_true": int(truth.sum()),
        "n_junk": int((1 - truth).sum()),
        "k": k,
        "scored": int(scored.sum()),
        "good_classes": int((good & scored).sum()),
        "tp": int((is_sel & (truth == 1)).sum()),
        "fp": int((is_sel & (truth == 0)).sum()),
        "fpr": float((is_sel & (truth == 0)).sum() / max(1, (truth == 0).sum())),
        "fnr": float((~is_sel & (truth == 1)).sum() / max(1, truth.sum())),
        "fp_no_dedup": int((raw_sel & (truth == 0)).sum()),
        "tp_no_dedup": int((raw_sel & (truth == 1)).sum()),
        "auc": roc_auc(score[scored], good[scored]),
        "auc_pres": roc_auc(pres[scored], good[scored]),
        "classes": [
            {
                "class": i + 1,
                "n": int(counts[i]),
                "true_frac": round(float(true_frac[i]), 3),
                "score": round(float(score[i]), 3),
                "pres": round(float(pres[i]), 3),
                "selected": int(model["rlnSelected"].iloc[i]),
            }
            for i in range(k)
        ],  # fmt: skip
        "wall_s": wall,
    }


def timing_100(work: Path, source: Path, bs: BenchSet) -> float:
    """Wall time of rp-rank-select on a 100-class job built from a real one (classes and particles tiled)."""
    from relion_plugins.relion.mrc import read_mrc, write_mrc
    from relion_plugins.relion.star import write_star

    proj = work / "timing100"
    if proj.exists():
        shutil.rmtree(proj)
    shutil.copytree(source, proj, ignore=shutil.ignore_patterns("External", "MotionCorr", "CtfFind"))
    root = proj / "Class2D/job005" / f"run_it{bs.iters:03d}"
    k_old = None
    model = read_star(f"{root}_model.star")
    classes = model["model_classes"]
    k_old = len(classes)
    stack, angpix = read_mrc(f"{root}_classes.mrcs")
    reps = int(np.ceil(100 / k_old))
    big = np.concatenate([stack] * reps)[:100]
    rng = np.random.default_rng(0)
    big = big + rng.normal(0, 0.01, big.shape).astype(np.float32)  # not 12 identical copies
    write_mrc(f"{root}_classes.mrcs", big, angpix, stack=True)
    new = pd.concat([classes] * reps, ignore_index=True).iloc[:100].copy()
    new["rlnReferenceImage"] = [f"{i + 1:06d}@Class2D/job005/{root.name}_classes.mrcs" for i in range(100)]
    new["rlnClassDistribution"] = new["rlnClassDistribution"] / new["rlnClassDistribution"].sum()
    model["model_classes"] = new
    model["model_general"]["rlnNrClasses"] = 100
    write_star(f"{root}_model.star", model)
    data = read_star(f"{root}_data.star")
    parts = pd.concat([data["particles"]] * 30, ignore_index=True)  # ~10-17k particles
    parts["rlnClassNumber"] = rng.integers(1, 101, len(parts))
    data["particles"] = parts
    write_star(f"{root}_data.star", data)
    walls = [
        run_job(proj, f"Class2D/job005/{root.name}_data.star", f"External/job{7 + i:03d}/") for i in range(3)
    ]
    print(
        f"timing: 100 classes, {len(parts)} particles: {', '.join(f'{w:.1f}' for w in walls)} s", flush=True
    )
    return float(np.median(walls)), len(parts)


def evaluate(sets, projects, work, write_page: bool = True) -> int:
    """Run the job on every prepared set, print and (optionally) write the results section."""
    from relion_plugins.rank.training import roc_auc

    rows = []
    for bs, proj in zip(sets, projects):
        r = evaluate_set(bs, proj)
        rows.append(r)
        print(
            f"[{r['set']}] {r['n_particles']} particles ({r['n_true']} true), {r['scored']}/{r['k']} classes "
            f"scored, {r['good_classes']} good: FPR {r['fpr']:.3f} FNR {r['fnr']:.3f} AUC {r['auc']:.3f} "
            f"(%/Res AUC {r['auc_pres']:.3f})",
            flush=True,
        )
        for c in r["classes"]:
            print(f"   {c}")
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    all_scores = [c["score"] for r in rows for c in r["classes"] if c["score"] > -999]
    all_good = [c["true_frac"] > 0.5 for r in rows for c in r["classes"] if c["score"] > -999]
    all_pres = [c["pres"] for r in rows for c in r["classes"] if c["score"] > -999]
    pooled_auc = roc_auc(np.array(all_scores), np.array(all_good))
    pooled_auc_pres = roc_auc(np.array(all_pres), np.array(all_good))
    fp = sum(r["fp"] for r in rows)
    n_junk = sum(r["n_junk"] for r in rows)
    tp = sum(r["tp"] for r in rows)
    n_true = sum(r["n_true"] for r in rows)
    pooled_fpr, pooled_fnr = fp / max(1, n_junk), 1 - tp / max(1, n_true)
    t100, n100 = timing_100(work, projects[0], sets[0])
    print(
        f"pooled: FPR {pooled_fpr:.3f} FNR {pooled_fnr:.3f} AUC {pooled_auc:.3f} (%/Res AUC "
        f"{pooled_auc_pres:.3f}); 100 classes in {t100:.1f} s"
    )
    if write_page:
        from benchmarks._report import machine_line, update_section

        lines = [
            "## Class ranker + %/Res selection (`benchmarks/rank_select.py`)",
            "",
            "Held-out simulated sets (shapes never used for the default weights: `ring` phantom, ribosome "
            "and spliceosome maps; junk from the micrograph simulator: ice, contaminants, carbon, "
            "aggregates, empty ice, off-centre picks), extracted to 64 px with Debian `relion_preprocess` "
            "and classified with Debian RELION 3.1 `relion_refine` (2D, EM, `--j 2`). `rp-rank-select` "
            "ran as RELION runs it, with its **default thresholds** (min_score 0.5, %/Res off, duplicates "
            "within 30 Å removed). "
            "FPR = junk particles selected / all junk particles; FNR = true particles not selected / all "
            "true particles; AUC: class scores, good = class whose particles are > 50 % true (classes "
            "with > 10 particles, RELION's scored ones).",
            "",
            "| set | particles (true) | K | scored classes (good) | FPR | FNR | junk share of selected | score AUC | %/Res AUC |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['set']} | {r['n_particles']} ({r['n_true']}) | {r['k']} | {r['scored']} "
                f"({r['good_classes']}) | {r['fpr']:.3f} | {r['fnr']:.3f} | {r['fp'] / max(1, r['fp'] + r['tp']):.3f} | "
                f"{r['auc']:.3f} | {r['auc_pres']:.3f} |"
            )
        lines.append(
            f"| **pooled** | {sum(r['n_particles'] for r in rows)} ({n_true}) | | {len(all_scores)} "
            f"({int(sum(all_good))}) | **{pooled_fpr:.3f}** | **{pooled_fnr:.3f}** | {fp / max(1, fp + tp):.3f} | "
            f"**{pooled_auc:.3f}** | {pooled_auc_pres:.3f} |"
        )
        fp_raw = sum(r["fp_no_dedup"] for r in rows)
        tp_raw = sum(r["tp_no_dedup"] for r in rows)
        lines += [
            "",
            f"Duplicate removal (default 30 Å, see docs/class_ranker.md) dropped {fp_raw - fp} junk and "
            f"{tp_raw - tp} true particles; without it (`--remove_duplicates -1`) the pooled FPR is "
            f"{fp_raw / max(1, n_junk):.3f} and the FNR {1 - tp_raw / max(1, n_true):.3f}. The junk it removes"
            " is off-centre picks that 2D alignment moved onto a particle already picked.",
        ]
        worst = max(rows, key=lambda r: r["fpr"])
        mixed = [c for c in worst["classes"] if c["selected"] and c["true_frac"] < 0.9]
        if mixed:
            c = max(mixed, key=lambda c: c["n"])
            lines += [
                "",
                f"Where the junk comes from: in {worst['set']}, RELION put {c['n']} particles "
                f"({100 * c['true_frac']:.1f} % true) into class {c['class']}; it is a good class by the "
                f"> 50 % rule (score {c['score']:.3f}) and selecting it brings its junk along. A class-level "
                "selection cannot separate particles RELION classified together; a further round of 2D "
                "classification of the selected particles would.",
            ]
        lines += [
            "",
            f"Speed: a 100-class job ({n100} particles; classes tiled from a real run) takes {t100:.1f} s "
            "wall time for the whole External job (start-up, reading the STAR files and class stack, "
            "features, network, all outputs and logfile.pdf), median of 3 runs, `--j 1`.",
            "",
            machine_line(),
            "Re-run: `python benchmarks/rank_select.py` (the RELION runs are cached in `--work`).",
        ]
        update_section("rank_select", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
