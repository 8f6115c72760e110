"""``rp-loop-report``: the per-iteration history and logfile of a self-supervised picking loop.

The loop (pick -> extract -> 2D classification -> rp-rank-select -> retrain the picker -> pick ...) is run by
relion_schemer with this job in ``continue`` mode, so the same job directory is re-run once per iteration.
Each run reads the ``particles.star`` of an rp-rank-select job (``--in_parts``) and the
``rank_summary.star`` beside it, optionally the ``autopick.star`` the iteration picked (``--in_coords``,
to count the picks), and with ``--truth`` (a coordinate list like autopick.star, or a particles STAR) the
precision / recall / F1 of the picks and of the selected particles (coordinates recentred by their
origins) against the truth, matched within ``--match_radius`` (pixels of the micrographs of ``--in_mics``).

Outputs in the job directory: ``loop_history.star`` (block ``loop_history``, one row per iteration; a
continue run appends a row, or replaces the row of the same rank-select job when that iteration is re-run;
a new run starts a fresh history) and ``logfile.pdf`` (the history as plots per iteration and a table).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..relion.external import JobContext, JobFailed, JobSpec, OutputNode, Param

HISTORY = "loop_history.star"
BLOCK = "loop_history"
SUMMARY = "rank_summary.star"

# Columns of loop_history.star. RELION never reads this file; the labels are our own (the "rp" prefix
# keeps them apart from RELION's), and our STAR reader types unknown labels per column.
COLUMNS: dict[str, tuple[str, str]] = {
    "rpLoopIteration": ("int", "iteration, 0-based, in the order the loop visited it"),
    "rpRankJob": ("str", "rp-rank-select job directory of the iteration (directory of --in_parts)"),
    "rpPickJob": ("str", "picking job directory (directory of --in_coords); empty if not given"),
    "rpNrPicks": ("int", "number of picks in --in_coords; -1 if not given"),
    "rpNrSelectedParticles": ("int", "selected particles (rank_summary rlnGroupNrParticles)"),
    "rpNrSelectedClasses": ("int", "selected classes (rank_summary rlnNrClasses)"),
    "rpSelectedFraction": ("float", "selected fraction of the particles (rank_summary rlnClassDistribution)"),
    "rpMeanPercentPerRes": ("float", "mean %/Res of the selected classes (rlnParticleFigureOfMerit)"),
    "rpMeanClassScore": ("float", "mean ranker score of the selected classes (rlnClassScore)"),
    "rpPicksPrecision": ("float", "precision of the picks against --truth; nan without truth"),
    "rpPicksRecall": ("float", "recall of the picks against --truth"),
    "rpPicksF1": ("float", "F1 of the picks against --truth"),
    "rpSelectionPrecision": ("float", "precision of the selected particles against --truth"),
    "rpSelectionRecall": ("float", "recall of the selected particles against --truth"),
    "rpSelectionF1": ("float", "F1 of the selected particles against --truth"),
}
# rank_summary.star label -> history column (labels as rank_select.SUMMARY_LABELS defines them)
FROM_SUMMARY = {
    "rlnGroupNrParticles": "rpNrSelectedParticles",
    "rlnNrClasses": "rpNrSelectedClasses",
    "rlnClassDistribution": "rpSelectedFraction",
    "rlnParticleFigureOfMerit": "rpMeanPercentPerRes",
    "rlnClassScore": "rpMeanClassScore",
}
_MIC, _X, _Y = "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"

PARAMS = [
    Param(
        "truth",
        "",
        "true particle positions: a coordinate list STAR like autopick.star, or a particles STAR; "
        "empty = no precision / recall / F1",
        str,
    ),
    Param("diameter", 150.0, "particle diameter (sets the default match radius)", float, "Å", minimum=1),
    Param(
        "match_radius",
        -1.0,
        "a pick within this distance of a true particle matches it (one to one); -1 = half the diameter",
        float,
        "Å",
    ),
    Param(
        "angpix",
        -1.0,
        "micrograph pixel size; -1 = from --in_mics (the micrographs STAR), else rlnMicrographPixelSize "
        "of the particles' optics table",
        float,
        "Å",
    ),
]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _job_dir(path: str, project_dir: Path) -> str:
    """The job directory of a file as RELION names it: ``External/job012/`` (relative to the project)."""
    p = Path(os.path.normpath(path))
    if p.is_absolute():
        try:
            p = p.relative_to(os.path.normpath(project_dir))
        except ValueError:
            pass
    parent = p.parent.as_posix()
    return parent if parent.endswith("/") else parent + "/"


def _quietly(ctx: JobContext, read, *args):
    """Call a reader; its warnings (e.g. a missing coordinate file) go to run.out, not run.err."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = read(*args)
    for w in caught[:5]:
        ctx.warn(str(w.message))
    if len(caught) > 5:
        ctx.warn(f"... and {len(caught) - 5} more such warnings")
    return result


def _read_summary(ctx: JobContext, parts: Path) -> dict:
    from ..relion.star import StarError, read_block

    path = parts.parent / SUMMARY
    shown = Path(ctx.in_parts or "").parent / SUMMARY
    if not path.is_file():
        raise JobFailed(
            f"{shown} not found: --in_parts must be the particles.star of an rp-rank-select job "
            "(its rank_summary.star lies beside it)"
        )
    try:
        summary = read_block(path, "rank_summary")
    except (StarError, OSError) as exc:
        raise JobFailed(f"{shown}: cannot read the rank_summary block: {_one_line(exc)}") from None
    if isinstance(summary, pd.DataFrame):  # written as a loop: take its first row
        if summary.empty:
            raise JobFailed(f"{shown}: the rank_summary table is empty")
        summary = summary.iloc[0].to_dict()
    missing = [lab for lab in FROM_SUMMARY if lab not in summary]
    if missing:
        raise JobFailed(f"{shown}: rank_summary lacks {', '.join(missing)}")
    return summary


def _read_particles(ctx: JobContext, parts: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    from ..relion.star import StarError, read_star

    try:
        blocks = read_star(parts)
    except (StarError, OSError) as exc:
        raise JobFailed(f"--in_parts {ctx.in_parts}: {_one_line(exc)}") from None
    table = blocks.get("particles")
    if not isinstance(table, pd.DataFrame):  # RELION 3.0: one table, often unnamed
        table = next((b for b in blocks.values() if isinstance(b, pd.DataFrame) and _MIC in b.columns), None)
    if not isinstance(table, pd.DataFrame):
        raise JobFailed(f"--in_parts {ctx.in_parts}: no particles table")
    optics = blocks.get("optics")
    return table, optics if isinstance(optics, pd.DataFrame) else None


def _micrograph_angpix(ctx: JobContext, optics: pd.DataFrame | None) -> float:
    """Pixel size of the micrographs the coordinates refer to (Å).

    ``--angpix``, else the micrographs STAR of ``--in_mics``, else ``rlnMicrographPixelSize`` of the
    particles' optics table. Not ``rlnMicrographOriginalPixelSize``: that is the movies' pixel size, 4x
    smaller for binned micrographs, and would make the match radius 4x too large.
    """
    if ctx.params["angpix"] > 0:
        return float(ctx.params["angpix"])
    if ctx.in_mics:
        from ..relion.micrographs import MicrographsError, read_micrographs

        try:
            return float(read_micrographs(ctx.in_mics, ctx.project_dir).angpix)
        except (MicrographsError, OSError, ValueError) as exc:
            raise JobFailed(f"--in_mics {ctx.in_mics}: {_one_line(exc)}") from None
    col = "rlnMicrographPixelSize"
    if optics is not None and col in optics.columns and len(optics):
        values = sorted({round(float(v), 6) for v in optics[col]})
        if len(values) > 1:
            raise JobFailed(
                f"--in_parts {ctx.in_parts}: optics groups have different {col} ({values}); give --angpix in Å"
            )
        if values[0] > 0:
            return values[0]
    raise JobFailed(
        f"--in_parts {ctx.in_parts}: no rlnMicrographPixelSize in the optics table; give --in_mics (the "
        "micrographs STAR) or --angpix in Å"
    )


def _selected_coordinates(ctx: JobContext, table: pd.DataFrame, angpix: float) -> dict[str, pd.DataFrame]:
    """The selected particles' centres in micrograph pixels (coordinate - origin), per micrograph."""
    missing = [c for c in (_MIC, _X, _Y) if c not in table.columns]
    if missing:
        raise JobFailed(f"--in_parts {ctx.in_parts}: the particles have no {', '.join(missing)}")
    x = table[_X].to_numpy(dtype=np.float64)
    y = table[_Y].to_numpy(dtype=np.float64)
    if "rlnOriginXAngst" in table.columns and "rlnOriginYAngst" in table.columns:
        x = x - table["rlnOriginXAngst"].to_numpy(dtype=np.float64) / angpix
        y = y - table["rlnOriginYAngst"].to_numpy(dtype=np.float64) / angpix
    elif "rlnOriginX" in table.columns and "rlnOriginY" in table.columns:  # RELION 3.0: pixels
        x = x - table["rlnOriginX"].to_numpy(dtype=np.float64)
        y = y - table["rlnOriginY"].to_numpy(dtype=np.float64)
    df = pd.DataFrame({_MIC: table[_MIC].astype(str).to_numpy(), _X: x, _Y: y})
    return {str(m): rows.reset_index(drop=True) for m, rows in df.groupby(_MIC, sort=False)}


def _read_truth(ctx: JobContext, name: str) -> dict[str, pd.DataFrame]:
    from ..relion.coords import read_coordinate_list, read_particle_coordinates
    from ..relion.star import read_star

    path = ctx.project_dir / name
    if not path.is_file():
        raise JobFailed(f"--truth {name}: no such file")
    try:
        blocks = read_star(path)
        if "coordinate_files" in blocks:
            tables = _quietly(ctx, read_coordinate_list, path, ctx.project_dir)
        else:
            tables = read_particle_coordinates(path, recenter=True)
    except (ValueError, OSError, KeyError) as exc:
        raise JobFailed(f"--truth {name}: cannot read it: {_one_line(exc)}") from None
    if not tables:
        raise JobFailed(f"--truth {name}: no micrographs in it")
    return tables


def _scores(ctx: JobContext, picks: dict, truth: dict, radius_px: float, what: str) -> tuple[float, ...]:
    from ..evaluate import evaluate_coordinates

    try:
        s = evaluate_coordinates(picks, truth, radius_px=radius_px)
    except ValueError as exc:
        raise JobFailed(f"cannot match the {what} to --truth: {_one_line(exc)}") from None
    if s["n_micrographs_with_picks"] == 0 and s["n_picks"] == 0 and any(len(t) for t in picks.values()):
        ctx.warn(f"no micrograph of the {what} is in --truth (names differ?)")
    return float(s["precision"]), float(s["recall"]), float(s["f1"])


def _empty_history() -> pd.DataFrame:
    dtypes = {"int": np.int64, "float": np.float64, "str": object}
    return pd.DataFrame({lab: pd.Series([], dtype=dtypes[kind]) for lab, (kind, _) in COLUMNS.items()})


def _typed(history: pd.DataFrame) -> pd.DataFrame:
    """Our columns in our order with our types; missing ones filled (older files), others kept after."""
    out = history.copy()
    for lab, (kind, _) in COLUMNS.items():
        if lab not in out.columns:
            out[lab] = {"int": -1, "float": math.nan, "str": ""}[kind]
        if kind == "int":
            out[lab] = pd.to_numeric(out[lab], errors="coerce").fillna(-1).astype(np.int64)
        elif kind == "float":
            out[lab] = pd.to_numeric(out[lab], errors="coerce").astype(np.float64)
        else:
            out[lab] = pd.Series(
                ["" if _missing(v) else str(v) for v in out[lab]], index=out.index, dtype=object
            )
    extra = [c for c in out.columns if c not in COLUMNS]
    return out[list(COLUMNS) + extra].reset_index(drop=True)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _read_history(ctx: JobContext) -> pd.DataFrame:
    from ..relion.star import StarError, read_block

    path = ctx.output_path(HISTORY)
    if not ctx.is_continue:
        if path.exists():
            ctx.log(f" new run: starting a fresh {HISTORY} (the old one is replaced)")
        return _empty_history()
    if not path.exists():
        ctx.log(f" continuing, but there is no {HISTORY} yet: starting one")
        return _empty_history()
    try:
        history = read_block(path, BLOCK)
    except (StarError, OSError) as exc:
        raise JobFailed(f"{path}: cannot read the loop history: {_one_line(exc)}") from None
    if not isinstance(history, pd.DataFrame) or "rpRankJob" not in history.columns:
        raise JobFailed(f"{path}: data_{BLOCK} is not a table with rpRankJob")
    return _typed(history)


def _fmt(v: float, digits: int = 3) -> str:
    return "-" if not math.isfinite(v) else f"{v:.{digits}f}"


def describe(row: dict | pd.Series) -> str:
    """``iteration 2: 1234 picks, 812 selected in 9 classes (45.0 %), mean %/Res 0.410, ...``."""
    text = f"iteration {int(row['rpLoopIteration'])}: "
    if int(row["rpNrPicks"]) >= 0:
        text += f"{int(row['rpNrPicks'])} picks, "
    text += (
        f"{int(row['rpNrSelectedParticles'])} selected in {int(row['rpNrSelectedClasses'])} classes "
        f"({100.0 * float(row['rpSelectedFraction']):.1f} %), mean %/Res {_fmt(row['rpMeanPercentPerRes'])}, "
        f"mean score {_fmt(row['rpMeanClassScore'])}"
    )
    if math.isfinite(row["rpPicksF1"]):
        text += f", picks F1 {row['rpPicksF1']:.3f}"
    if math.isfinite(row["rpSelectionF1"]):
        text += f", selection F1 {row['rpSelectionF1']:.3f}"
    return text + f" [{row['rpRankJob']}]"


def _logfile(ctx: JobContext, history: pd.DataFrame) -> None:
    from ..plots.figures import history_figure, write_pdf

    h = history
    it = h["rpLoopIteration"].to_numpy(dtype=np.float64)
    picks = h["rpNrPicks"].to_numpy(dtype=np.float64)
    picks[picks < 0] = np.nan
    counts = [("selected particles", h["rpNrSelectedParticles"].to_numpy(dtype=np.float64), "bar")]
    if np.isfinite(picks).any():
        counts.insert(0, ("picks", picks, "bar"))
    panels = [
        ("particles", counts, None),
        (
            "mean %/Res",
            [("mean %/Res of the selected classes", h["rpMeanPercentPerRes"].to_numpy(), "line")],
            None,
        ),
        (
            "fraction / score",
            [
                ("selected fraction", h["rpSelectedFraction"].to_numpy(), "line"),
                ("mean ranker score", h["rpMeanClassScore"].to_numpy(), "line"),
            ],
            (0.0, 1.05),
        ),
    ]
    truth_cols = ["rpPicksF1", "rpSelectionF1"]
    if np.isfinite(h[truth_cols].to_numpy(dtype=np.float64)).any():
        panels.append(
            (
                "F1 against the truth",
                [
                    ("picks F1", h["rpPicksF1"].to_numpy(), "line"),
                    ("selection F1", h["rpSelectionF1"].to_numpy(), "line"),
                ],
                (0.0, 1.05),
            )
        )
    header = ["it", "rank job", "pick job", "picks", "selected", "classes", "fraction", "%/Res", "score"]
    header += ["picks P", "picks R", "picks F1", "sel P", "sel R", "sel F1"]
    rows = []
    for _, r in h.iterrows():
        rows.append(
            [
                str(int(r["rpLoopIteration"])),
                r["rpRankJob"],
                r["rpPickJob"] or "-",
                str(int(r["rpNrPicks"])) if r["rpNrPicks"] >= 0 else "-",
                str(int(r["rpNrSelectedParticles"])),
                str(int(r["rpNrSelectedClasses"])),
                _fmt(r["rpSelectedFraction"]),
                _fmt(r["rpMeanPercentPerRes"]),
                _fmt(r["rpMeanClassScore"]),
            ]
            + [
                _fmt(r[c])
                for c in (
                    "rpPicksPrecision",
                    "rpPicksRecall",
                    "rpPicksF1",
                    "rpSelectionPrecision",
                    "rpSelectionRecall",
                    "rpSelectionF1",
                )
            ]
        )
    title = f"Picking loop history: {len(h)} iteration{'s' if len(h) != 1 else ''}"
    write_pdf(ctx.output_path("logfile.pdf"), [history_figure(it, panels, title, header, rows)])


def run(ctx: JobContext) -> list[OutputNode]:
    from ..relion.coords import read_coordinate_list
    from ..relion.nodes import star_version_number
    from ..relion.star import StarError, write_star

    p = ctx.params
    parts_path = ctx.project_dir / (ctx.in_parts or "")
    if not parts_path.is_file():
        raise JobFailed(
            f"--in_parts {ctx.in_parts}: no such file (give an rp-rank-select job's particles.star)"
        )
    summary = _read_summary(ctx, parts_path)
    row: dict = {lab: {"int": -1, "float": math.nan, "str": ""}[kind] for lab, (kind, _) in COLUMNS.items()}
    row["rpRankJob"] = _job_dir(ctx.in_parts or "", ctx.project_dir)
    for label, column in FROM_SUMMARY.items():
        try:
            row[column] = float(summary[label])
        except (TypeError, ValueError):
            raise JobFailed(
                f"{row['rpRankJob']}{SUMMARY}: {label} is not a number: {summary[label]!r}"
            ) from None
    row["rpNrSelectedParticles"] = int(row["rpNrSelectedParticles"])
    row["rpNrSelectedClasses"] = int(row["rpNrSelectedClasses"])

    picks = None
    if ctx.in_coords:
        coords_path = ctx.project_dir / ctx.in_coords
        if not coords_path.is_file():
            raise JobFailed(f"--in_coords {ctx.in_coords}: no such file")
        try:
            picks = _quietly(ctx, read_coordinate_list, coords_path, ctx.project_dir)
        except (StarError, ValueError, OSError) as exc:
            raise JobFailed(f"--in_coords {ctx.in_coords}: {_one_line(exc)}") from None
        row["rpPickJob"] = _job_dir(ctx.in_coords, ctx.project_dir)
        row["rpNrPicks"] = int(sum(len(t) for t in picks.values()))
    ctx.check_abort()

    table, optics = _read_particles(ctx, parts_path)
    if len(table) != row["rpNrSelectedParticles"]:
        ctx.warn(
            f"{ctx.in_parts} holds {len(table)} particles, {SUMMARY} says {row['rpNrSelectedParticles']} "
            "were selected"
        )
    if p["truth"]:
        truth = _read_truth(ctx, p["truth"])
        angpix = _micrograph_angpix(ctx, optics)
        radius_A = p["match_radius"] if p["match_radius"] > 0 else 0.5 * p["diameter"]
        radius_px = radius_A / angpix
        n_truth = sum(len(t) for t in truth.values())
        ctx.log(
            f" truth: {n_truth} particles on {len(truth)} micrographs ({p['truth']}); match radius "
            f"{radius_A:g} Å = {radius_px:.1f} px at {angpix:g} Å/px"
        )
        if picks is not None:
            prf = _scores(ctx, picks, truth, radius_px, "picks")
            row["rpPicksPrecision"], row["rpPicksRecall"], row["rpPicksF1"] = prf
        selected = _selected_coordinates(ctx, table, angpix) if len(table) else {}
        prf = _scores(ctx, selected, truth, radius_px, "selected particles")
        row["rpSelectionPrecision"], row["rpSelectionRecall"], row["rpSelectionF1"] = prf
    ctx.check_abort()

    history = _read_history(ctx)
    records = history.to_dict("records")
    same = [i for i, r in enumerate(records) if r["rpRankJob"] == row["rpRankJob"]]
    if same:  # a re-run of that iteration: its row is replaced, in place
        row["rpLoopIteration"] = int(records[same[0]]["rpLoopIteration"])
        records[same[0]] = {**records[same[0]], **row}
        records = [r for i, r in enumerate(records) if i not in same[1:]]
        what = "replaced"
    else:
        row["rpLoopIteration"] = max([int(r["rpLoopIteration"]) for r in records] + [len(records) - 1]) + 1
        records.append(row)
        what = "appended"
    history = pd.DataFrame(records, columns=list(dict.fromkeys([*COLUMNS, *history.columns])))
    history = _typed(history)
    write_star(ctx.output_path(HISTORY), {BLOCK: history}, star_version_number(ctx.version))
    ctx.log(f" {what} iteration {row['rpLoopIteration']} ({row['rpRankJob']}); {len(history)} in {HISTORY}:")
    for _, r in history.iterrows():
        ctx.log(("* " if r["rpRankJob"] == row["rpRankJob"] else "  ") + describe(r))
    _logfile(ctx, history)
    # loop_history.star is not an output node: no node kind of relion.nodes fits a per-iteration table
    # (particles / coords / ... would offer it to RELION jobs as input); RELION does not read it anyway.
    return [OutputNode("logfile.pdf", "logfile")]


JOB = JobSpec(
    name="rp-loop-report",
    description=__doc__ or "",
    params=PARAMS,
    run=run,
    inputs=("in_parts", "in_coords", "in_mics"),
    required_inputs=("in_parts",),
)
