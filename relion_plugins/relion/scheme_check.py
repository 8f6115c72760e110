"""Static checker for RELION 4/5 scheme directories (``relion-plugins scheme check``).

Every rule comes from reference §2 and §9: things ``relion_schemer`` rejects when it reads the scheme, and
the traps it accepts but then runs wrongly (numeric literals that read as 0, bool variables in External
parameters, job nodes missing from ``scheme_jobs``, aliases into sub-directories, ...). Errors make a
scheme unfit to run; warnings are legal but probably not what was meant.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .labels import label_type
from .scheme import JOB_FILE, UNDEFINED, Scheme, SchemeError, read_scheme
from .scheme_ops import (
    JOB_INPUT_NODES,
    KNOWN_JOB_TYPES,
    OPERATOR_ARGS,
    UNIMPLEMENTED_OPERATORS,
    dollar_names,
    float_to_string,
    is_number,
    job_reference,
    option_kind,
)

FILE_READING = ("bool=read_star", "float=read_star", "string=read_star")
_RUN_IT = re.compile(r"run_it(\d{3})_")


@dataclass(frozen=True)
class Finding:
    level: str  # "error" or "warning"
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper()}: {self.where}: {self.message}"


def check_scheme_dir(
    directory: str | os.PathLike, schemes_root: str | os.PathLike | None = None
) -> list[Finding]:
    """Check ``directory`` (holding scheme.star and one sub-directory per job). ``schemes_root`` is the
    ``Schemes/`` directory that holds other schemes this one refers to (default: the parent)."""
    directory = Path(directory)
    try:
        scheme = read_scheme(directory)
    except SchemeError as exc:
        return [Finding("error", str(directory / "scheme.star"), str(exc))]
    root = Path(schemes_root) if schemes_root is not None else directory.parent
    findings = check_scheme(scheme, directory.name, root)
    for job in scheme.jobs:
        if not (directory / job / JOB_FILE).is_file():
            findings.append(Finding("error", f"job {job}", f"{directory / job / JOB_FILE} is missing"))
    return findings


def check_scheme(
    scheme: Scheme, dir_name: str | None = None, schemes_root: Path | None = None
) -> list[Finding]:
    """All findings for a scheme read into memory."""
    out: list[Finding] = []

    def err(where: str, msg: str) -> None:
        out.append(Finding("error", where, msg))

    def warn(where: str, msg: str) -> None:
        out.append(Finding("warning", where, msg))

    _check_name(scheme, dir_name, err)
    _check_namespace(scheme, err)
    for op in scheme.operators.values():
        _check_operator(scheme, op, err, warn)
    _check_edges(scheme, err, warn)
    _check_jobs(scheme, err, warn)
    for job, star in scheme.job_stars.items():
        _check_job_options(scheme, job, star, err, warn)
    for name, (value, reset) in scheme.strings.items():
        for text in {value, reset}:
            _check_alias(scheme, f"string variable {name}", text, err, warn, schemes_root)
    return out


def _check_name(scheme: Scheme, dir_name: str | None, err) -> None:
    if not re.fullmatch(r"Schemes/[^/\s]+/", scheme.name):
        err(
            "scheme_general",
            f"_rlnSchemeName is {scheme.name!r}; it must be exactly Schemes/NAME/ with the trailing slash "
            "(RELION 4.0 does not add it)",
        )
    elif dir_name is not None and scheme.short_name != dir_name:
        err("scheme_general", f"_rlnSchemeName {scheme.name} does not match the directory {dir_name}/")


def _check_namespace(scheme: Scheme, err) -> None:
    both = set(scheme.operators) & set(scheme.jobs)
    for name in sorted(both):
        err(name, "an operator and a job share this node name")
    seen: dict[str, str] = {}
    for kind, table in (("float", scheme.floats), ("bool", scheme.bools), ("string", scheme.strings)):
        for name in table:
            if name in seen:
                err(name, f"variable defined as {seen[name]} and as {kind}")
            seen[name] = kind
            if name.startswith("xxx_tmp") or not name or any(c.isspace() for c in name):
                err(name, "invalid variable name (relion_schemer uses xxx_tmp_* itself)")


def _arg_ok(scheme: Scheme, kind: str, value: str) -> str | None:
    """None if ``value`` fits argument ``kind``, else why not."""
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if value in ("", UNDEFINED):
        return None if (optional or kind == "") else "is missing"
    if kind == "":
        return "should be undefined (this operator does not use it)"
    vtype = scheme.variable_type(value)
    if kind == "N":
        if vtype == "float":
            return None
        if is_number(value):
            return (
                f"is the numeric literal {value}: relion_schemer accepts it but reads it as 0 at run time; "
                "put the constant in a float variable"
            )
        return "must be a float variable"
    want = {"B": "bool", "F": "float", "S": "string"}.get(kind)
    if kind == "A":
        return None if vtype else "must be a variable"
    if vtype != want:
        return f"must be a {want} variable" + (
            f" ({value} is a {vtype})" if vtype else f" ({value} is undefined)"
        )
    return None


def _check_operator(scheme: Scheme, op, err, warn) -> None:
    where = f"operator {op.name}"
    if op.type in UNIMPLEMENTED_OPERATORS:
        err(where, f"{op.type} is declared by RELION but not implemented (fails when executed)")
        return
    if op.type not in OPERATOR_ARGS:
        err(where, f"unknown operator type {op.type!r}")
        return
    for slot, kind, value in zip(
        ("output", "input1", "input2"), OPERATOR_ARGS[op.type], (op.output, op.input1, op.input2)
    ):
        problem = _arg_ok(scheme, kind, value)
        if problem:
            err(where, f"{slot} {value!r} {problem}")
    if op.type in ("bool=read_star", "float=read_star", "string=read_star", "float=star_table_sort_idx"):
        if op.input2 not in (UNDEFINED, "") and is_number(op.input2):
            pass  # reported above as a literal
    if op.type == "string=nth_word" and op.input2 in scheme.floats and scheme.floats[op.input2][0] < 0:
        err(where, "a negative word number always gives 'undefined' (RELION's arithmetic is wrong for N < 0)")
    if op.type in FILE_READING or op.type.startswith("float=star_table_"):
        _check_star_address(scheme, op, err)
    if op.input2 in scheme.strings:
        text = scheme.strings[op.input2][0]
        if "Schemes/" in text:
            err(
                where,
                f"input2 {op.input2} holds a Schemes/ path: relion_schemer then overwrites input1 with it "
                "(RELION bug); swap the arguments or use a plain path",
            )


def _check_star_address(scheme: Scheme, op, err) -> None:
    where = f"operator {op.name}"
    if op.input1 not in scheme.strings:
        return
    parts = scheme.strings[op.input1][0].split(",")
    if len(parts) < 3:
        err(where, f"{op.input1} must be 'file.star,table,label' (no data_ prefix)")
        return
    table, label = parts[1], parts[2].lstrip("_")
    if table.startswith("data_"):
        err(where, f"table {table!r} must be given without the data_ prefix")
    kind = label_type(label)
    if kind is None:
        err(where, f"{label} is not a RELION label: relion_schemer cannot read it")
    elif op.type.startswith("float=") and kind not in ("double", "int"):
        err(where, f"{label} is a {kind} label; {op.type} needs a double or int label")
    elif op.type == "string=read_star" and kind != "string":
        err(where, f"{label} is a {kind} label; string=read_star needs a string label")
    elif op.type == "bool=read_star" and kind != "bool":
        err(where, f"{label} is a {kind} label; bool=read_star needs a bool label")


def _check_edges(scheme: Scheme, err, warn) -> None:
    nodes = scheme.nodes()
    outgoing: dict[str, int] = {}
    for e in scheme.edges:
        where = f"edge {e.input} -> {e.output}"
        outgoing[e.input] = outgoing.get(e.input, 0) + 1
        for n in (e.input, e.output) + ((e.output_if_true,) if e.is_fork else ()):
            if n not in nodes:
                err(where, f"node {n!r} is neither an operator nor a job in scheme_jobs")
        if e.is_fork:
            if e.bool_variable not in scheme.bools:
                err(where, f"fork variable {e.bool_variable!r} is not a bool variable")
        elif e.output_if_true not in (UNDEFINED, "") or e.bool_variable not in (UNDEFINED, ""):
            warn(where, "a plain edge (is-fork 0) should have undefined if-true node and variable")
    for n, count in outgoing.items():
        if count > 1:
            err(n, f"{count} outgoing edges; relion_schemer follows only the last one")
    if not scheme.edges:
        err("scheme_edges", "no edges: the scheme has no start node")
        return
    # Reachability from the start node.
    seen, todo = set(), [scheme.start_node()]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        for e in scheme.edges:
            if e.input == n:
                todo.append(e.output)
                if e.is_fork:
                    todo.append(e.output_if_true)
    for n in sorted(nodes - seen):
        warn(n, "never reached from the start node")
    if scheme.current_node in scheme.operators and scheme.operators[scheme.current_node].type == "exit":
        warn("scheme_general", "the current node is an exit operator: --run stops at once; run --reset first")
    elif scheme.current_node not in (UNDEFINED, "") and scheme.current_node not in nodes:
        err("scheme_general", f"current node {scheme.current_node!r} is not a node")


def _check_jobs(scheme: Scheme, err, warn) -> None:
    edge_nodes = {e.input for e in scheme.edges} | {e.output for e in scheme.edges}
    edge_nodes |= {e.output_if_true for e in scheme.edges if e.is_fork}
    for n in sorted(edge_nodes - scheme.nodes() - {UNDEFINED}):
        err(n, "used in an edge but not in scheme_jobs (relion_schemer dies with 'unrecognised mode')")
    for name, job in scheme.jobs.items():
        if job.mode not in ("new", "continue"):
            err(f"job {name}", f"mode {job.mode!r} must be new or continue")
        star = scheme.job_stars.get(name)
        if star is None:
            continue
        label = ".".join(star.type_label.split(".")[:2])
        if label not in KNOWN_JOB_TYPES:
            err(f"job {name}", f"job type {star.type_label!r} is not a RELION 4/5 job type")


def _check_job_options(scheme: Scheme, job: str, star, err, warn) -> None:
    label = ".".join(star.type_label.split(".")[:2])
    for key, value in star.options.items():
        where = f"job {job}, option {key}"
        for var in dollar_names(value):
            vtype = scheme.variable_type(var)
            kind = option_kind(label, key)
            if vtype is None:
                err(where, f"$${var} is not a variable of this scheme")
            elif vtype == "bool" and kind != "boolean":
                extra = (
                    " (External parameters are text: use a string or float variable)"
                    if label == "relion.external"
                    else ""
                )
                err(where, f"bool variable {var} cannot go into a non-boolean option{extra}")
            elif vtype == "float" and kind == "boolean":
                err(where, f"float variable {var} cannot go into a Yes/No option")
            elif vtype == "string" and kind in ("boolean", "slider"):
                err(where, f"string variable {var} cannot go into a {kind} option")
        if "$$" in value and value.split("$$", 1)[1].startswith(" "):
            err(where, "nothing after $$")
        if kind_is_bool_text(label, key) and "$$" not in value and value not in ("Yes", "No"):
            err(where, f"Yes/No option has value {value!r}")
        _check_alias(scheme, where, value, err, warn, None)
        if label == "relion.external":
            if ">" in value:
                err(where, "'>' in an External option disables RELION's run.out/run.err redirection")
            if key == "fn_exe" and "relion_" in value:
                warn(where, "an executable whose path contains relion_ gets --pipeline_control appended")
            if key.endswith("_value") and " " in value.strip() and "$$" not in value:
                warn(where, "a value with spaces is split into several words on RELION's command line")
            if key.endswith("_label") and value not in ("", '""') and (" " in value or value.startswith("-")):
                err(where, f"parameter label {value!r} must be one word without leading dashes")
    _check_class2d_iterations(scheme, job, star, err)


def kind_is_bool_text(label: str, key: str) -> bool:
    return option_kind(label, key) == "boolean"


def _check_alias(scheme: Scheme, where: str, text: str, err, warn, schemes_root: Path | None) -> None:
    if "$$" in text:
        resolved = []
        for var in dollar_names(text):
            if var in scheme.strings:
                resolved.append(scheme.strings[var][0])
        for r in resolved:
            _check_alias(scheme, f"{where} (via $$)", r, err, warn, schemes_root)
    ref = job_reference(scheme.name, text)
    if ref is None:
        return
    name, job = ref
    if text.count("Schemes/") > 1:
        err(
            where,
            f"{text}: several Schemes/ references in one value; only the first job reference is replaced "
            "and RELION takes everything up to the last / as its name",
        )
        return

    if name == scheme.name:
        if job not in scheme.jobs:
            if "/" in job and job.split("/", 1)[0] in scheme.jobs:
                err(
                    where,
                    f"{text}: a file in a sub-directory of a job is not resolved (RELION takes {job!r} as the job)",
                )
            else:
                err(where, f"{text}: {job or '(nothing)'} is not a job of this scheme")
            return
    elif schemes_root is not None and (schemes_root / name.split("/")[1] / "scheme.star").is_file():
        try:
            other = read_scheme(schemes_root / name.split("/")[1], with_jobs=False)
        except SchemeError:
            other = None
        if other is not None and job not in other.jobs:
            err(where, f"{text}: {job!r} is not a job of {name}")


def _check_class2d_iterations(scheme: Scheme, job: str, star, err) -> None:
    """A run_itNNN_ file of a Class2D node must be the iteration that node's settings end at."""
    target = scheme.job_stars
    for key, value in star.options.items():
        texts = [value] + [scheme.strings[v][0] for v in dollar_names(value) if v in scheme.strings]
        for text in texts:
            ref = job_reference(scheme.name, text)
            m = _RUN_IT.search(text)
            if not ref or not m or ref[1] not in target:
                continue
            other = target[ref[1]]
            if ".".join(other.type_label.split(".")[:2]) != "relion.class2d":
                continue
            last = _class2d_last_iteration(scheme, other.options)
            if last is not None and int(m.group(1)) != last:
                err(
                    f"job {job}, option {key}",
                    f"{text} names iteration {int(m.group(1))} but job {ref[1]} ends at iteration {last}",
                )


def _class2d_last_iteration(scheme: Scheme, options: dict[str, str]) -> int | None:
    def resolved(key: str, default: str) -> str:
        v = options.get(key, default)
        for var in dollar_names(v):
            if var in scheme.floats:
                v = v.replace("$$" + var, float_to_string(scheme.floats[var][0]))
            elif var in scheme.bools:
                v = v.replace("$$" + var, "Yes" if scheme.bools[var][0] else "No")
        return v

    grad = resolved("do_grad", "No") == "Yes"
    try:
        return int(float(resolved("nr_iter_grad" if grad else "nr_iter_em", "200" if grad else "25")))
    except ValueError:
        return None


def input_nodes(job_type: str, options: dict[str, str]) -> list[str]:
    """Option keys whose files the schemer waits for before running the job."""
    label = ".".join(job_type.split(".")[:2])
    return [k for k in JOB_INPUT_NODES.get(label, ()) if options.get(k, "") not in ("", '""')]
