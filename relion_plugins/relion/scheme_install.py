"""``relion-plugins scheme install``: put a shipped scheme into a project's ``Schemes/`` directory.

Copies the scheme under its own or a new name (renaming every ``Schemes/OLD/`` reference, as
``relion_schemer --copy`` does), sets variables (current and reset value, keeping their types), edits job
options, chooses the node-type labels of the project's RELION version, resets it to its start node, checks
it, and only then moves it into place: a failed install leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .scheme import Scheme, SchemeError, read_scheme, write_scheme
from .scheme_check import check_scheme


def parse_assignments(items: list[str], what: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` strings -> pairs (the value may contain '=')."""
    out = []
    for item in items:
        if "=" not in item:
            raise SchemeError(f"{what} {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out.append((key.strip(), value))
    return out


def rename_scheme(scheme: Scheme, new_name: str) -> None:
    """Rename ``Schemes/OLD/`` to ``Schemes/NEW/`` in the scheme, its string variables and job options."""
    old_prefix, new_prefix = scheme.name, f"Schemes/{new_name}/"
    scheme.name = new_prefix
    scheme.strings = {
        k: (v.replace(old_prefix, new_prefix), r.replace(old_prefix, new_prefix))
        for k, (v, r) in scheme.strings.items()
    }
    for star in scheme.job_stars.values():
        star.options = {k: v.replace(old_prefix, new_prefix) for k, v in star.options.items()}
        star.header = star.header.replace(old_prefix, new_prefix)


def configure_scheme(
    scheme: Scheme,
    variables: list[tuple[str, str]] = (),  # type: ignore[assignment]
    job_options: list[tuple[str, str]] = (),  # type: ignore[assignment]
    relion_version: int | None = None,
) -> None:
    """Set variables (``name``, value) and job options (``job:option``, value) in memory."""
    for name, value in variables:
        if scheme.variable_type(name) is None:
            known = ", ".join(sorted(set(scheme.floats) | set(scheme.bools) | set(scheme.strings)))
            raise SchemeError(f"{scheme.name} has no variable {name!r} (it has: {known})")
        scheme.set_value(name, value, reset=True)
    for key, value in job_options:
        if ":" not in key:
            raise SchemeError(f"job option {key!r}: expected JOB:OPTION=VALUE")
        job, option = key.split(":", 1)
        star = scheme.job_stars.get(job)
        if star is None:
            raise SchemeError(f"{scheme.name} has no job {job!r} (it has: {', '.join(scheme.job_stars)})")
        if option not in star.options:
            raise SchemeError(f"job {job} ({star.type_label}) has no option {option!r} in its job.star")
        star.options[option] = value
    if relion_version is not None and "relion_version" in scheme.strings:
        scheme.set_value("relion_version", str(relion_version), reset=True)


def install_scheme(
    source: str | os.PathLike,
    project_dir: str | os.PathLike,
    name: str | None = None,
    variables: list[tuple[str, str]] = (),  # type: ignore[assignment]
    job_options: list[tuple[str, str]] = (),  # type: ignore[assignment]
    relion_version: str = "auto",
    force: bool = False,
) -> Path:
    """Install the scheme directory ``source`` as ``project_dir/Schemes/<name>/``; returns that path."""
    from .nodes import project_relion_version

    project_dir = Path(project_dir)
    if not project_dir.is_dir():
        raise SchemeError(f"{project_dir}: no such project directory")
    scheme = read_scheme(source)
    target_name = name or scheme.short_name
    if not target_name or "/" in target_name or target_name.startswith("."):
        raise SchemeError(f"invalid scheme name {target_name!r}")
    lock = project_dir / f".relion_lock_scheme_{target_name}"
    if lock.exists():
        raise SchemeError(
            f"{lock} exists: the scheme is running, or a schemer died (remove it with rm -rf once nothing runs)"
        )
    target = project_dir / "Schemes" / target_name
    if target.exists() and not force:
        raise SchemeError(f"{target} exists; use --force to replace it")
    if target_name != scheme.short_name:
        rename_scheme(scheme, target_name)
    version = None if relion_version == "auto" else int(relion_version)
    if version is None:
        version = project_relion_version(project_dir)
    if version not in (4, 5):
        raise SchemeError(f"RELION version {relion_version!r}: choose 4, 5 or auto")
    configure_scheme(scheme, variables, job_options, version)
    scheme.reset()
    errors = [f for f in check_scheme(scheme, target_name, project_dir / "Schemes") if f.level == "error"]
    if errors:
        raise SchemeError(f"the configured scheme does not pass the check: {errors[0]}")
    (project_dir / "Schemes").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target_name}.", dir=project_dir / "Schemes"))
    try:
        write_scheme(scheme, tmp)
        os.chmod(tmp, 0o755)
        if target.exists():
            old = target.with_name(f".{target_name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
