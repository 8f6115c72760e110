"""What ``relion_schemer`` does with a scheme's values: operators, ``$$`` variables, job-name aliases.

Semantics follow RELION 4.0/5.0 ``src/schemer.cpp`` (reference §2.4-2.5), bugs included, because a scheme
must behave under the real schemer the way our checker, dry run and local runner say it will:

* input2 of comparisons, arithmetic and ``nth_word`` is read only from a float variable, otherwise 0;
* ``Schemes/NAME/J/`` in a string is replaced by job J's current name (``J`` before J ever ran, ``""`` for
  a J that is no job of the scheme), only for the first job referenced;
* a string variable in an operator's input2 that needs such a replacement overwrites input1.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .scheme import UNDEFINED, Scheme, SchemeError, read_scheme

# Argument kinds: B/F/S = a bool/float/string variable; N = float variable (a numeric literal passes RELION's
# validation but reads as 0); A = any variable; "" = unused. A trailing "?" marks an optional argument.
OPERATOR_ARGS: dict[str, tuple[str, str, str]] = {
    # type: (output, input1, input2)
    "bool=set": ("B", "B", ""),
    "bool=and": ("B", "B", "B"),
    "bool=or": ("B", "B", "B"),
    "bool=not": ("B", "B", ""),
    "bool=gt": ("B", "F", "N"),
    "bool=lt": ("B", "F", "N"),
    "bool=ge": ("B", "F", "N"),
    "bool=le": ("B", "F", "N"),
    "bool=eq": ("B", "F", "N"),
    "bool=file_exists": ("B", "S", ""),
    "bool=read_star": ("B", "S", "F?"),
    "float=set": ("F", "F", ""),
    "float=plus": ("F", "F", "N"),
    "float=minus": ("F", "F", "N"),
    "float=mult": ("F", "F", "N"),
    "float=divide": ("F", "F", "N"),
    "float=round": ("F", "F", ""),
    "float=count_images": ("F", "S", "S?"),
    "float=count_words": ("F", "S", ""),
    "float=read_star": ("F", "S", "F?"),
    "float=star_table_max": ("F", "S", ""),
    "float=star_table_min": ("F", "S", ""),
    "float=star_table_avg": ("F", "S", ""),
    "float=star_table_sort_idx": ("F", "S", "N"),
    "string=set": ("S", "S", ""),
    "string=join": ("S", "S", "S"),
    "string=before_first": ("S", "S", "S"),
    "string=after_first": ("S", "S", "S"),
    "string=before_last": ("S", "S", "S"),
    "string=after_last": ("S", "S", "S"),
    "string=read_star": ("S", "S", "F?"),
    "string=glob": ("S", "S", ""),
    "string=nth_word": ("S", "S", "N"),
    "touch_file": ("", "S", ""),
    "copy_file": ("", "S", "S"),
    "move_file": ("", "S", "S"),
    "delete_file": ("", "S", ""),
    "email": ("", "A", "A?"),
    "wait": ("F?", "F", ""),
    "exit_maxtime": ("", "F", ""),
    "exit": ("", "", ""),
}
# Declared in RELION's schemer.h but not implemented: fail with "unrecognised Operator type" when run.
UNIMPLEMENTED_OPERATORS = ("float=star_table_max_idx", "float=star_table_min_idx")

# Option kinds that constrain $$ substitution (RELION pipeline_jobs.cpp; the running tab is added to every
# job type). Options not listed are free text, file names or input nodes: any float or string variable.
RUNNING_BOOLEANS = {"do_queue"}
RUNNING_SLIDERS = {"nr_mpi", "nr_threads", "min_dedicated"}
JOB_BOOLEANS: dict[str, set[str]] = {
    "relion.external": set(),
    "relion.extract": {
        "do_reextract", "do_reset_offsets", "do_recenter", "do_invert", "do_float16", "do_norm",
        "do_rescale", "do_fom_threshold", "do_extract_helix", "helical_bimodal_angular_priors",
        "do_extract_helical_tubes", "do_cut_into_segments",
    },
    "relion.class2d": {
        "do_ctf_correction", "ctf_intact_first_peak", "do_em", "do_grad", "do_zero_mask", "do_center",
        "dont_skip_align", "allow_coarser", "do_helix", "do_bimodal_psi", "do_restrict_xoff",
        "do_parallel_discio", "do_preread_images", "do_combine_thru_disc", "use_gpu",
    },
    "relion.select": {
        "do_class_ranker", "do_recenter", "do_regroup", "do_select_values", "do_discard", "do_split",
        "do_random", "do_remove_duplicates", "do_filaments",
    },
}  # fmt: skip
JOB_SLIDERS: dict[str, set[str]] = {
    "relion.external": set(),
    "relion.extract": {
        "extract_size", "bg_diameter", "white_dust", "black_dust", "rescale", "minimum_pick_fom",
        "helical_tube_outer_diameter", "helical_nr_asu", "helical_rise",
    },
    "relion.class2d": {
        "nr_classes", "tau_fudge", "nr_iter_em", "nr_iter_grad", "particle_diameter", "highres_limit",
        "psi_sampling", "offset_range", "offset_step", "helical_tube_outer_diameter", "range_psi",
        "helical_rise", "nr_pool",
    },
    "relion.select": {
        "rank_threshold", "select_nr_parts", "select_nr_classes", "nr_groups", "discard_sigma",
        "split_size", "nr_split", "duplicate_threshold", "image_angpix", "dendrogram_threshold",
        "dendrogram_minclass",
    },
}  # fmt: skip
# Input-node options: the schemer waits for these files before it runs the job.
JOB_INPUT_NODES: dict[str, tuple[str, ...]] = {
    "relion.external": ("in_mov", "in_mic", "in_part", "in_coords", "in_3dref", "in_mask"),
    "relion.extract": ("star_mics", "coords_suffix"),
    "relion.class2d": ("fn_img",),
    "relion.select": ("fn_model", "fn_mic", "fn_data"),
}
KNOWN_JOB_TYPES = (
    "relion.import", "relion.motioncorr", "relion.ctffind", "relion.manualpick", "relion.autopick",
    "relion.extract", "relion.select", "relion.class2d", "relion.initialmodel", "relion.class3d",
    "relion.refine3d", "relion.multibody", "relion.maskcreate", "relion.joinstar", "relion.subtract",
    "relion.postprocess", "relion.localres", "relion.polish", "relion.ctfrefine", "relion.external",
)  # fmt: skip
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def is_number(text: str) -> bool:
    """What RELION's isNumber accepts (a numeric literal)."""
    return bool(_NUMBER.match(text.strip()))


def option_kind(job_type: str, option: str) -> str:
    """``boolean``, ``slider`` or ``text`` for a job option (for the ``$$`` type rules)."""
    label = ".".join(job_type.split(".")[:2])
    if option in RUNNING_BOOLEANS or option in JOB_BOOLEANS.get(label, set()):
        return "boolean"
    if option in RUNNING_SLIDERS or option in JOB_SLIDERS.get(label, set()):
        return "slider"
    return "text"


def float_to_string(value: float) -> str:
    """RELION's floatToString as the schemer uses it for ``$$``: %g on a single-precision float."""
    import numpy as np

    return f"{float(np.float32(value)):g}"


def dollar_names(text: str) -> list[str]:
    """Variable names referenced by ``$$`` in an option value (the text up to the next space)."""
    names = []
    rest = text
    while "$$" in rest:
        after = rest.split("$$", 1)[1]
        name = after.split(" ", 1)[0]
        if not name:
            break
        names.append(name)
        rest = after[len(name) :]
    return names


def substitute_dollars(scheme: Scheme, option: str, value: str, job_type: str) -> str:
    """Replace every ``$$var`` in a job option value; raise SchemeError where RELION would stop."""
    kind = option_kind(job_type, option)
    text = value
    while "$$" in text:
        before, after = text.split("$$", 1)
        splits = [s for s in after.split(" ") if s]
        if not splits:
            raise SchemeError(f"option {option}: nothing after $$ in {value!r}")
        name = splits[0]
        vtype = scheme.variable_type(name)
        if vtype == "bool":
            if kind != "boolean":
                raise SchemeError(f"option {option}: bool variable {name} into a non-boolean option")
            rep = "Yes" if scheme.bools[name][0] else "No"
        elif vtype == "float":
            if kind == "boolean":
                raise SchemeError(f"option {option}: float variable {name} into a boolean option")
            rep = float_to_string(scheme.floats[name][0])
        elif vtype == "string":
            if kind in ("boolean", "slider"):
                raise SchemeError(f"option {option}: string variable {name} into a {kind} option")
            rep = scheme.strings[name][0]
        else:
            raise SchemeError(f"option {option}: $${name} is not a variable of {scheme.name}")
        text = before + rep + "".join(" " + s for s in splits[1:])
    return text


def job_reference(scheme_name: str, text: str) -> tuple[str, str] | None:
    """(scheme name ``Schemes/X/``, job J) that ``Schemes/...`` in ``text`` refers to, as RELION parses it."""
    if scheme_name in text:
        rest = text.split(scheme_name, 1)[1]
        return (scheme_name, rest.rsplit("/", 1)[0]) if "/" in rest else (scheme_name, "")
    if "Schemes/" in text:
        after = text.split("Schemes/", 1)[1]
        other = after.split("/", 1)[0]
        rest = text.split(other + "/", 1)[1] if other + "/" in text else ""
        return f"Schemes/{other}/", (rest.rsplit("/", 1)[0] if "/" in rest else "")
    return None


def substitute_jobnames(
    scheme: Scheme,
    text: str,
    project_dir: Path,
    other_schemes: dict[str, Scheme] | None = None,
    missing_ok: bool = False,
) -> str:
    """RELION's changeStringForJobnames: ``Schemes/NAME/J/`` -> J's current job name. With ``missing_ok``
    (dry runs) a reference to another scheme that is not installed is left as it is."""
    ref = job_reference(scheme.name, text)
    if ref is None:
        return text
    name, job = ref
    if name == scheme.name:
        current = scheme.jobs[job].name if job in scheme.jobs else ""
        return text.replace(name + job + "/", current)
    other = (other_schemes or {}).get(name)
    if other is None:
        star = project_dir / name / "scheme.star"
        if not star.is_file():
            if missing_ok:
                return text
            raise SchemeError(f"cannot find Scheme STAR file: {name}scheme.star")
        other = read_scheme(project_dir / name, with_jobs=False)
    if job not in other.jobs:
        raise SchemeError(f"cannot find job {job} in scheme: {name}scheme.star")
    current = other.jobs[job].name
    if not current.endswith("/"):
        current += "/"
    return text.replace(name + job + "/", current)


# --------------------------------------------------------------------------------------------------
# operators


@dataclass
class OperatorOutcome:
    """What one operator did, for logs and dry runs."""

    changed: str = ""  # "var = value" when a variable was set
    stop: bool = False  # exit / exit_maxtime reached
    note: str = ""


class OperatorRunner:
    """Executes operators on a scheme's variables, with files relative to ``project_dir``.

    ``file_reader`` lets a dry run answer file-reading operators (count_images, read_star, file_exists,
    star_table_*) from given values instead of files: it gets (operator name, default) and returns a value.
    """

    def __init__(
        self,
        scheme: Scheme,
        project_dir: str | os.PathLike,
        file_reader: Callable[[str, object], object] | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        other_schemes: dict[str, Scheme] | None = None,
    ) -> None:
        import time

        self.scheme = scheme
        self.project_dir = Path(project_dir)
        self.file_reader = file_reader
        self.clock = clock or time.time
        self.sleep = sleep or time.sleep
        self.other_schemes = other_schemes
        self.wait_mark: float | None = None  # per process, as in RELION
        self.exit_time: float | None = None

    # -- helpers
    def _path(self, text: str) -> Path:
        p = Path(text)
        return p if p.is_absolute() else self.project_dir / p

    def _string(self, name: str) -> str:
        return self.scheme.strings[name][0]

    def _float(self, name: str) -> float:
        return self.scheme.floats[name][0] if name in self.scheme.floats else 0.0

    def _set(self, name: str, value: object) -> str:
        kind = self.scheme.variable_type(name)
        if kind == "float":
            self.scheme.floats[name] = (float(value), self.scheme.floats[name][1])  # type: ignore[arg-type]
        elif kind == "bool":
            self.scheme.bools[name] = (bool(value), self.scheme.bools[name][1])
        elif kind == "string":
            self.scheme.strings[name] = (str(value), self.scheme.strings[name][1])
        else:
            raise SchemeError(f"operator output {name!r} is not a variable")
        shown = float_to_string(value) if kind == "float" else value  # type: ignore[arg-type]
        return f"{name} = {shown}"

    def _from_file(self, op_name: str, compute: Callable[[], object], default: object) -> object:
        if self.file_reader is not None:
            return self.file_reader(op_name, default)
        return compute()

    def run(self, op_name: str) -> OperatorOutcome:
        """Execute one operator node (with the temporary job-name substitution RELION applies)."""
        s = self.scheme
        op = s.operators[op_name]
        if op.type in UNIMPLEMENTED_OPERATORS or op.type not in OPERATOR_ARGS:
            raise SchemeError(f"{op_name}: unrecognised Operator type {op.type}")
        in1, in2, out = op.input1, op.input2, op.output
        saved = dict(s.strings)
        try:
            subst: dict[str, str] = {}
            for slot, var in (("in1", in1), ("in2", in2), ("out", out)):
                if var in s.strings:
                    new = substitute_jobnames(
                        s,
                        s.strings[var][0],
                        self.project_dir,
                        self.other_schemes,
                        self.file_reader is not None,
                    )
                    if new != s.strings[var][0]:
                        subst[slot] = new
            tmp = "xxx_tmp"
            if "in1" in subst:
                s.strings[tmp + "_input1"] = (subst["in1"], "")
                in1 = tmp + "_input1"
            if "in2" in subst:  # RELION's bug: the substituted input2 replaces input1
                s.strings[tmp + "_input2"] = (subst["in2"], "")
                in1 = tmp + "_input2"
            out_tmp = None
            if "out" in subst:
                s.strings[tmp + "_output"] = (subst["out"], "")
                out_tmp = tmp + "_output"
            outcome = self._perform(op_name, op.type, in1, in2, out_tmp or out)
            result = s.strings.get(out_tmp, ("", ""))[0] if out_tmp else None
        finally:
            for k in [k for k in s.strings if k.startswith("xxx_tmp")]:
                del s.strings[k]
            for k, v in saved.items():
                if k not in s.strings:
                    s.strings[k] = v
        if out_tmp is not None and result is not None:
            outcome.changed = self._set(out, result)
        return outcome

    def _perform(self, op_name: str, typ: str, in1: str, in2: str, out: str) -> OperatorOutcome:
        s = self.scheme
        val2 = self._float(in2) if in2 in s.floats else 0.0
        o = OperatorOutcome()
        b = lambda n: s.bools[n][0]  # noqa: E731
        f = self._float
        if typ == "bool=set":
            o.changed = self._set(out, b(in1))
        elif typ in ("bool=and", "bool=or"):
            o.changed = self._set(out, (b(in1) and b(in2)) if typ == "bool=and" else (b(in1) or b(in2)))
        elif typ == "bool=not":
            o.changed = self._set(out, not b(in1))
        elif typ in ("bool=gt", "bool=lt", "bool=ge", "bool=le", "bool=eq"):
            x = f(in1)
            res = {
                "bool=gt": x > val2,
                "bool=lt": x < val2,
                "bool=ge": x >= val2,
                "bool=le": x <= val2,
                "bool=eq": abs(x - val2) < 1e-8,
            }[typ]
            o.changed = self._set(out, res)
        elif typ == "bool=file_exists":
            path = self._string(in1)
            o.changed = self._set(out, self._from_file(op_name, lambda: self._path(path).exists(), False))
        elif typ in ("bool=read_star", "float=read_star", "string=read_star") or typ.startswith(
            "float=star_table_"
        ):
            value = self._from_file(op_name, lambda: self._read_star(typ, in1, in2), 0.0)
            o.changed = self._set(out, value)
        elif typ == "float=set":
            o.changed = self._set(out, f(in1))
        elif typ == "float=plus":
            o.changed = self._set(out, f(in1) + val2)
        elif typ == "float=minus":
            o.changed = self._set(out, f(in1) - val2)
        elif typ == "float=mult":
            o.changed = self._set(out, f(in1) * val2)
        elif typ == "float=divide":
            o.changed = self._set(
                out, f(in1) / val2 if val2 != 0 else float("inf") * (1 if f(in1) >= 0 else -1)
            )
        elif typ == "float=round":
            o.changed = self._set(out, float(round(f(in1))))
        elif typ == "float=count_images":
            table = self._string(in2) if in2 in s.strings else "particles"
            path = self._string(in1)
            o.changed = self._set(out, self._from_file(op_name, lambda: self._count(path, table), 0.0))
        elif typ == "float=count_words":
            text = self._string(in1)
            o.changed = self._set(
                out, 0.0 if text == UNDEFINED else float(len([w for w in text.split(",") if w]))
            )
        elif typ == "string=set":
            o.changed = self._set(out, self._string(in1))
        elif typ == "string=join":
            o.changed = self._set(out, self._string(in1) + self._string(in2))
        elif typ in ("string=before_first", "string=after_first", "string=before_last", "string=after_last"):
            text, sep = self._string(in1), self._string(in2)
            if sep not in text:
                res = text  # RELION's FileName::before/after*Of return the whole string then
            elif typ == "string=before_first":
                res = text.split(sep, 1)[0]
            elif typ == "string=after_first":
                res = text.split(sep, 1)[1]
            elif typ == "string=before_last":
                res = text.rsplit(sep, 1)[0]
            else:
                res = text.rsplit(sep, 1)[1]
            o.changed = self._set(out, res)
        elif typ == "string=glob":
            files = sorted(glob.glob(str(self._path(self._string(in1)))))
            rel = [os.path.relpath(p, self.project_dir) for p in files]
            o.changed = self._set(out, ",".join(rel) if rel else UNDEFINED)
        elif typ == "string=nth_word":
            words = self._string(in1).split(",")
            pos = int(round(val2))
            if pos < 0:
                pos = len(words) - pos + 1  # RELION's arithmetic: negative N never works
            pos -= 1
            o.changed = self._set(out, words[pos] if 0 <= pos < len(words) else UNDEFINED)
        elif typ == "touch_file":
            if self.file_reader is None:
                p = self._path(self._string(in1))
                p.parent.mkdir(parents=True, exist_ok=True)
                p.touch()
            o.note = f"touch {self._string(in1)}"
        elif typ in ("copy_file", "move_file"):
            src, dst = self._string(in1), self._string(in2)
            if self.file_reader is None:
                self._copy(src, dst, move=typ == "move_file")
            o.note = f"{'copy' if typ == 'copy_file' else 'move'} {src} -> {dst}"
        elif typ == "delete_file":
            if self.file_reader is None:
                for p in glob.glob(str(self._path(self._string(in1)))):
                    Path(p).unlink(missing_ok=True)
            o.note = f"delete {self._string(in1)}"
        elif typ == "email":
            o.note = "e-mail (not sent outside relion_schemer)"
        elif typ == "wait":
            now = self.clock()
            if self.wait_mark is not None:
                elapsed = now - self.wait_mark
                if out in s.floats:
                    o.changed = self._set(out, elapsed)
                if f(in1) - elapsed > 0:
                    self.sleep(f(in1) - elapsed)
                    o.note = f"waited {f(in1) - elapsed:.0f} s"
            self.wait_mark = self.clock()
        elif typ == "exit_maxtime":
            now = self.clock()
            if self.exit_time is None:
                self.exit_time = now + f(in1) * 3600
            elif now > self.exit_time:
                o.stop, o.note = True, "maximum time reached"
        elif typ == "exit":
            o.stop, o.note = True, "exit"
        return o

    def _copy(self, src: str, dst: str, move: bool) -> None:
        import shutil

        target = self._path(dst)
        if "/" in dst:
            target.parent.mkdir(parents=True, exist_ok=True)
        sources = sorted(glob.glob(str(self._path(src))))
        for p in sources:
            dest = target / Path(p).name if target.is_dir() else target
            if move:
                shutil.move(p, dest)
            else:
                shutil.copyfile(p, dest)

    def _count(self, path: str, table: str) -> float:
        from .star import read_star

        p = self._path(path)
        if not p.exists():
            return 0.0
        block = read_star(p, blocks=[table]).get(table)
        return float(len(block)) if block is not None and hasattr(block, "__len__") else 0.0

    def _read_star(self, typ: str, in1: str, in2: str) -> object:
        import numpy as np
        import pandas as pd

        from .star import read_star

        parts = self._string(in1).split(",")
        if len(parts) < 3:
            raise SchemeError(f"{in1}: need 'starfile,table,label', got {self._string(in1)!r}")
        star, table, label = parts[0], parts[1], parts[2]
        path = self._path(star)
        if not path.is_file():
            raise SchemeError(f"MetaDataTable::read: File {star} does not exist")
        block = read_star(path, blocks=[table]).get(table)
        if block is None:
            raise SchemeError(f"{star}: no table data_{table}")
        label = label.lstrip("_")
        if isinstance(block, dict):
            block = pd.DataFrame([block])
        if label not in block.columns:
            raise SchemeError(f"{star}: data_{table} has no _{label}")
        column = block[label]
        if typ.startswith("float=star_table_"):
            values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
            if typ == "float=star_table_max":
                return float(np.max(values)) if len(values) else -99e99
            if typ == "float=star_table_min":
                return float(np.min(values)) if len(values) else 99e99
            if typ == "float=star_table_avg":
                return float(np.mean(values)) if len(values) else 0.0
            idx = int(round(self._float(in2)))
            if idx == 0:
                raise SchemeError("star_table_sort_idx: input2 must be a positive or negative float variable")
            order = np.argsort(values, kind="stable")
            idx = len(values) + idx if idx < 0 else idx - 1
            return float(order[idx])
        row = int(round(self._float(in2))) if in2 in self.scheme.floats else 0
        value = column.iloc[row]
        if typ == "string=read_star":
            return str(value)
        if typ == "bool=read_star":
            return bool(int(value))
        return float(value)
