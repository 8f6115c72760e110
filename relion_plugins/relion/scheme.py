"""RELION 4/5 Schemes on disk: ``Schemes/NAME/scheme.star`` and one ``job.star`` per job node.

The model mirrors what ``relion_schemer`` reads and writes (reference §2.2): variables of three types with
current and reset values, operators, job nodes with mode and has-started flag, and edges / forks. Reading
keeps the text of every value (operators name variables; job options stay strings), so a scheme written
back is the scheme that was read. Writing is atomic, in RELION's block order, with ``# version 30001``
headers, which RELION 4.0 and 5.0 both read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .star import StarError, read_star, write_star

UNDEFINED = "undefined"
SCHEME_FILE = "scheme.star"
JOB_FILE = "job.star"
STAR_VERSION = 30001  # what RELION 4.0 writes; 5.0 reads it unchanged


class SchemeError(ValueError):
    """A scheme directory or file that cannot be read or is inconsistent (one line)."""


@dataclass
class Operator:
    name: str
    type: str
    output: str = UNDEFINED
    input1: str = UNDEFINED
    input2: str = UNDEFINED


@dataclass
class JobNode:
    original_name: str
    name: str = ""
    mode: str = "new"
    has_started: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.original_name


@dataclass
class Edge:
    input: str
    output: str
    is_fork: bool = False
    output_if_true: str = UNDEFINED
    bool_variable: str = UNDEFINED


@dataclass
class JobStar:
    """A ``job.star``: process type label, continue / tomo flags, and option key -> value text."""

    type_label: str
    options: dict[str, str] = field(default_factory=dict)
    is_continue: bool = False
    is_tomo: bool = False
    header: str = ""  # leading comment lines, kept when re-written


@dataclass
class Scheme:
    name: str  # "Schemes/NAME/" exactly as _rlnSchemeName
    current_node: str = UNDEFINED
    floats: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (value, reset)
    bools: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    strings: dict[str, tuple[str, str]] = field(default_factory=dict)
    operators: dict[str, Operator] = field(default_factory=dict)
    jobs: dict[str, JobNode] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    job_stars: dict[str, JobStar] = field(default_factory=dict)  # job node -> its template (if present)

    @property
    def short_name(self) -> str:
        """NAME of ``Schemes/NAME/``."""
        return self.name.rstrip("/").rsplit("/", 1)[-1]

    def variable_type(self, name: str) -> str | None:
        """``float``, ``bool``, ``string`` or None."""
        for kind, table in (("float", self.floats), ("bool", self.bools), ("string", self.strings)):
            if name in table:
                return kind
        return None

    def value(self, name: str) -> float | bool | str:
        for table in (self.floats, self.bools, self.strings):
            if name in table:
                return table[name][0]
        raise KeyError(name)

    def set_value(self, name: str, value: float | bool | str, reset: bool = False) -> None:
        """Set a variable's current value (and its reset value when ``reset``), keeping its type."""
        kind = self.variable_type(name)
        if kind is None:
            raise SchemeError(f"{self.name}: no variable {name!r}")
        typed = parse_variable_value(kind, value, name)
        table = {"float": self.floats, "bool": self.bools, "string": self.strings}[kind]
        table[name] = (typed, typed if reset else table[name][1])

    def nodes(self) -> set[str]:
        return set(self.operators) | set(self.jobs)

    def start_node(self) -> str:
        """Where ``--reset`` puts the scheme: the input node of the first edge."""
        if not self.edges:
            raise SchemeError(f"{self.name}: the scheme has no edges")
        return self.edges[0].input

    def next_node(self, node: str) -> str | None:
        """The node after ``node`` given the current bool values (the last matching edge wins, as in RELION)."""
        found = None
        for e in self.edges:
            if e.input == node:
                found = e
        if found is None:
            return None
        if found.is_fork:
            flag = self.bools.get(found.bool_variable, (False, False))[0]
            return found.output_if_true if flag else found.output
        return found.output

    def reset(self) -> None:
        """What ``relion_schemer --reset`` does."""
        self.floats = {k: (r, r) for k, (_, r) in self.floats.items()}
        self.bools = {k: (r, r) for k, (_, r) in self.bools.items()}
        self.strings = {k: (r, r) for k, (_, r) in self.strings.items()}
        for job in self.jobs.values():
            job.has_started = False
            job.name = job.original_name
        self.current_node = self.start_node()


def parse_variable_value(kind: str, value: object, name: str = "") -> float | bool | str:
    """Convert text or a Python value to a variable of ``kind`` the way relion_schemer --set_var does."""
    if kind == "float":
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise SchemeError(f"float variable {name!r}: {value!r} is not a number") from None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip()
        if text in ("1", "true", "True", "Yes", "yes"):
            return True
        if text in ("0", "false", "False", "No", "no"):
            return False
        raise SchemeError(f"bool variable {name!r}: {value!r} is not true/false/1/0")
    return str(value)


# --------------------------------------------------------------------------------------------------
# reading


def _text(v: object) -> str:
    """Value text as RELION wrote it (the STAR reader may have typed it by label)."""
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return str(int(f)) if f.is_integer() else repr(f)
    return str(v)


def _rows(block: object, path: Path, name: str, labels: list[str]) -> Iterator[list[str]]:
    if block is None:
        return
    if not isinstance(block, pd.DataFrame):
        raise SchemeError(f"{path}: data_{name} must be a loop")
    missing = [lab for lab in labels if lab not in block.columns]
    if missing:
        raise SchemeError(f"{path}: data_{name} lacks _{missing[0]}")
    for row in block[labels].itertuples(index=False):
        yield [_text(v) for v in row]


def _bool_text(text: str, path: Path, what: str) -> bool:
    if text in ("0", "1"):
        return text == "1"
    raise SchemeError(f"{path}: {what} is {text!r}; scheme.star bools must be 0 or 1")


def read_scheme(directory: str | os.PathLike, with_jobs: bool = True) -> Scheme:
    """Read ``directory/scheme.star`` and, with ``with_jobs``, every job node's ``job.star`` that exists."""
    directory = Path(directory)
    path = directory / SCHEME_FILE
    if not path.is_file():
        raise SchemeError(f"{path}: no such file")
    try:
        blocks = read_star(path)
    except (StarError, OSError) as exc:
        raise SchemeError(str(exc)) from None
    general = blocks.get("scheme_general")
    if not isinstance(general, dict) or "rlnSchemeName" not in general:
        raise SchemeError(f"{path}: data_scheme_general with _rlnSchemeName is missing")
    scheme = Scheme(
        name=_text(general["rlnSchemeName"]),
        current_node=_text(general.get("rlnSchemeCurrentNodeName", UNDEFINED)),
    )
    for name, value, reset in _rows(
        blocks.get("scheme_floats"),
        path,
        "scheme_floats",
        ["rlnSchemeFloatVariableName", "rlnSchemeFloatVariableValue", "rlnSchemeFloatVariableResetValue"],
    ):
        scheme.floats[name] = (
            parse_variable_value("float", value, name),
            parse_variable_value("float", reset, name),
        )  # type: ignore[assignment]
    for name, value, reset in _rows(
        blocks.get("scheme_bools"),
        path,
        "scheme_bools",
        [
            "rlnSchemeBooleanVariableName",
            "rlnSchemeBooleanVariableValue",
            "rlnSchemeBooleanVariableResetValue",
        ],
    ):
        scheme.bools[name] = (
            _bool_text(value, path, f"bool {name}"),
            _bool_text(reset, path, f"bool {name} (reset)"),
        )
    for name, value, reset in _rows(
        blocks.get("scheme_strings"),
        path,
        "scheme_strings",
        ["rlnSchemeStringVariableName", "rlnSchemeStringVariableValue", "rlnSchemeStringVariableResetValue"],
    ):
        scheme.strings[name] = (value, reset)
    for name, typ, out, in1, in2 in _rows(
        blocks.get("scheme_operators"),
        path,
        "scheme_operators",
        [
            "rlnSchemeOperatorName",
            "rlnSchemeOperatorType",
            "rlnSchemeOperatorOutput",
            "rlnSchemeOperatorInput1",
            "rlnSchemeOperatorInput2",
        ],
    ):
        scheme.operators[name] = Operator(name, typ, out, in1, in2)
    for orig, name, mode, started in _rows(
        blocks.get("scheme_jobs"),
        path,
        "scheme_jobs",
        ["rlnSchemeJobNameOriginal", "rlnSchemeJobName", "rlnSchemeJobMode", "rlnSchemeJobHasStarted"],
    ):
        scheme.jobs[orig] = JobNode(orig, name, mode, _bool_text(started, path, f"has-started of {orig}"))
    for inp, out, fork, out_true, flag in _rows(
        blocks.get("scheme_edges"),
        path,
        "scheme_edges",
        [
            "rlnSchemeEdgeInputNodeName",
            "rlnSchemeEdgeOutputNodeName",
            "rlnSchemeEdgeIsFork",
            "rlnSchemeEdgeOutputNodeNameIfTrue",
            "rlnSchemeEdgeBooleanVariable",
        ],
    ):
        scheme.edges.append(Edge(inp, out, _bool_text(fork, path, f"is-fork of edge {inp}"), out_true, flag))
    if with_jobs:
        for job in scheme.jobs:
            job_path = directory / job / JOB_FILE
            if job_path.is_file():
                scheme.job_stars[job] = read_job_star(job_path)
    return scheme


def read_job_star(path: str | os.PathLike) -> JobStar:
    """Read a ``job.star`` (the process type, flags and option values as text)."""
    path = Path(path)
    try:
        blocks = read_star(path)
    except (StarError, OSError) as exc:
        raise SchemeError(str(exc)) from None
    job = blocks.get("job")
    if not isinstance(job, dict) or "rlnJobTypeLabel" not in job:
        raise SchemeError(f"{path}: data_job with _rlnJobTypeLabel is missing")
    options: dict[str, str] = {}
    for key, value in _rows(
        blocks.get("joboptions_values"),
        path,
        "joboptions_values",
        ["rlnJobOptionVariable", "rlnJobOptionValue"],
    ):
        options[key] = value
    header = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("#") and not line.startswith("# version"):
                header.append(line.rstrip("\n"))
            elif line.strip() and not line.startswith("#"):
                break
    return JobStar(
        type_label=_text(job["rlnJobTypeLabel"]),
        options=options,
        is_continue=_text(job.get("rlnJobIsContinue", "0")) == "1",
        is_tomo=_text(job.get("rlnJobIsTomo", "0")) == "1",
        header="\n".join(header),
    )


# --------------------------------------------------------------------------------------------------
# writing


def _loop(columns: list[str], rows: list[list[object]]) -> pd.DataFrame:
    return pd.DataFrame([[str(v) for v in r] for r in rows], columns=columns, dtype=object)


def _float_text(v: float) -> str:
    return repr(float(v)) if not float(v).is_integer() else f"{float(v):.1f}"


def scheme_blocks(scheme: Scheme) -> dict[str, object]:
    """The STAR blocks of scheme.star in RELION's order; empty blocks are left out as RELION does."""
    blocks: dict[str, object] = {
        "scheme_general": {"rlnSchemeName": scheme.name, "rlnSchemeCurrentNodeName": scheme.current_node}
    }
    if scheme.floats:
        blocks["scheme_floats"] = _loop(
            ["rlnSchemeFloatVariableName", "rlnSchemeFloatVariableValue", "rlnSchemeFloatVariableResetValue"],
            [[k, _float_text(v), _float_text(r)] for k, (v, r) in scheme.floats.items()],
        )
    if scheme.bools:
        blocks["scheme_bools"] = _loop(
            [
                "rlnSchemeBooleanVariableName",
                "rlnSchemeBooleanVariableValue",
                "rlnSchemeBooleanVariableResetValue",
            ],
            [[k, int(v), int(r)] for k, (v, r) in scheme.bools.items()],
        )
    if scheme.strings:
        blocks["scheme_strings"] = _loop(
            [
                "rlnSchemeStringVariableName",
                "rlnSchemeStringVariableValue",
                "rlnSchemeStringVariableResetValue",
            ],
            [[k, v, r] for k, (v, r) in scheme.strings.items()],
        )
    if scheme.operators:
        blocks["scheme_operators"] = _loop(
            [
                "rlnSchemeOperatorName",
                "rlnSchemeOperatorType",
                "rlnSchemeOperatorOutput",
                "rlnSchemeOperatorInput1",
                "rlnSchemeOperatorInput2",
            ],
            [[o.name, o.type, o.output, o.input1, o.input2] for o in scheme.operators.values()],
        )
    if scheme.jobs:
        blocks["scheme_jobs"] = _loop(
            ["rlnSchemeJobNameOriginal", "rlnSchemeJobName", "rlnSchemeJobMode", "rlnSchemeJobHasStarted"],
            [[j.original_name, j.name, j.mode, int(j.has_started)] for j in scheme.jobs.values()],
        )
    blocks["scheme_edges"] = _loop(
        [
            "rlnSchemeEdgeInputNodeName",
            "rlnSchemeEdgeOutputNodeName",
            "rlnSchemeEdgeIsFork",
            "rlnSchemeEdgeOutputNodeNameIfTrue",
            "rlnSchemeEdgeBooleanVariable",
        ],
        [[e.input, e.output, int(e.is_fork), e.output_if_true, e.bool_variable] for e in scheme.edges],
    )
    return blocks


def write_scheme(scheme: Scheme, directory: str | os.PathLike, with_jobs: bool = True) -> None:
    """Write ``directory/scheme.star`` (atomically) and, with ``with_jobs``, each job node's job.star."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if with_jobs:
        for name, job in scheme.job_stars.items():
            write_job_star(job, directory / name / JOB_FILE)
    write_star(directory / SCHEME_FILE, scheme_blocks(scheme), version=STAR_VERSION)


def write_job_star(job: JobStar, path: str | os.PathLike, version: int = STAR_VERSION) -> None:
    """Write a job.star (atomically); options keep their order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = {
        "job": {
            "rlnJobTypeLabel": job.type_label,
            "rlnJobIsContinue": int(job.is_continue),
            "rlnJobIsTomo": int(job.is_tomo),
        },
        "joboptions_values": _loop(
            ["rlnJobOptionVariable", "rlnJobOptionValue"], [[k, v] for k, v in job.options.items()]
        ),
    }
    write_star(path, blocks, version=version)
    if job.header:
        text = path.read_text()
        from .atomic import write_text

        write_text(path, job.header.rstrip("\n") + "\n" + text)
