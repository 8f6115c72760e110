"""Scheme files, the checker (one test per trap of reference §2/§9), operators, dry runs and install."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relion_plugins.relion.scheme import (
    Edge,
    JobNode,
    Operator,
    Scheme,
    SchemeError,
    read_scheme,
    write_scheme,
)
from relion_plugins.relion.scheme_check import check_scheme, check_scheme_dir
from relion_plugins.relion.scheme_install import install_scheme
from relion_plugins.relion.scheme_ops import (
    OperatorRunner,
    float_to_string,
    substitute_dollars,
    substitute_jobnames,
)
from relion_plugins.relion.scheme_run import class2d_command, dry_run, external_command, extract_command
from relion_plugins.scheme_cli import shipped_schemes

SHIPPED = shipped_schemes()


@pytest.fixture
def selfpick() -> Scheme:
    return read_scheme(SHIPPED["selfpick"])


def errors(scheme: Scheme) -> list[str]:
    return [f"{f.where}: {f.message}" for f in check_scheme(scheme, scheme.short_name) if f.level == "error"]


def warnings(scheme: Scheme) -> list[str]:
    return [
        f"{f.where}: {f.message}" for f in check_scheme(scheme, scheme.short_name) if f.level == "warning"
    ]


# ---------------------------------------------------------------------------------------------- files


def test_shipped_schemes_exist_and_pass_the_checker():
    assert {"selfpick", "selfpick_otf"} <= set(SHIPPED)
    for path in SHIPPED.values():
        assert check_scheme_dir(path) == [], path


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_scheme_round_trip(tmp_path, name):
    scheme = read_scheme(SHIPPED[name])
    write_scheme(scheme, tmp_path / name)
    again = read_scheme(tmp_path / name)
    assert again == scheme
    assert b"\r\n" not in (tmp_path / name / "scheme.star").read_bytes()


_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(
    floats=st.dictionaries(_word.map(lambda w: "f_" + w), st.floats(-1e6, 1e6, allow_nan=False), max_size=5),
    bools=st.dictionaries(_word.map(lambda w: "b_" + w), st.booleans(), max_size=5),
    strings=st.dictionaries(
        _word.map(lambda w: "s_" + w), st.text(alphabet="abc/._-,0123 $", min_size=0, max_size=20), max_size=5
    ),
)
def test_variables_round_trip(tmp_path_factory, floats, bools, strings):
    scheme = Scheme("Schemes/x/")
    scheme.floats = {k: (v, -v) for k, v in floats.items()}
    scheme.bools = {k: (v, not v) for k, v in bools.items()}
    scheme.strings = {k: (v, v[::-1]) for k, v in strings.items()}
    scheme.operators = {"EXIT": Operator("EXIT", "exit")}
    scheme.edges = [Edge("EXIT", "EXIT")]
    d = tmp_path_factory.mktemp("x")
    write_scheme(scheme, d)
    again = read_scheme(d)
    assert again.floats == scheme.floats and again.bools == scheme.bools and again.strings == scheme.strings


# ---------------------------------------------------------------------------------------------- checker: one test per trap


def test_numeric_literal_in_operator_is_rejected(selfpick):
    selfpick.operators["NEXT_iter"].input2 = "1"  # float=plus iter iter 1 adds 0 under relion_schemer
    assert any("numeric literal 1" in e for e in errors(selfpick))


def test_unimplemented_operator_is_rejected(selfpick):
    selfpick.operators["READ_pres"].type = "float=star_table_max_idx"
    assert any("not implemented" in e for e in errors(selfpick))


def test_negative_nth_word_is_rejected(selfpick):
    selfpick.floats["minus_one"] = (-1.0, -1.0)
    selfpick.operators["NTH"] = Operator("NTH", "string=nth_word", "coords", "coords", "minus_one")
    assert any("negative word number" in e for e in errors(selfpick))


def test_bool_variable_in_external_parameter_is_rejected(selfpick):
    selfpick.job_stars["pick"].options["param2_value"] = "$$improved"
    assert any("bool variable improved cannot go into a non-boolean option" in e for e in errors(selfpick))


def test_string_variable_in_slider_and_float_in_boolean_are_rejected(selfpick):
    selfpick.job_stars["class2d"].options["nr_classes"] = "$$mics_star"
    selfpick.job_stars["extract"].options["do_invert"] = "$$min_score"
    found = errors(selfpick)
    assert any("string variable mics_star cannot go into a slider" in e for e in found)
    assert any("float variable min_score cannot go into a Yes/No" in e for e in found)


def test_unknown_dollar_variable_is_rejected(selfpick):
    selfpick.job_stars["rank"].options["param1_value"] = "$$no_such_variable"
    assert any("$$no_such_variable is not a variable" in e for e in errors(selfpick))


def test_job_node_missing_from_scheme_jobs_is_rejected(selfpick):
    del selfpick.jobs["report"]  # still in the edges: relion_schemer dies with "unrecognised mode"
    assert any("not in scheme_jobs" in e for e in errors(selfpick))


def test_missing_job_star_and_unknown_job_type_are_rejected(tmp_path, selfpick):
    selfpick.job_stars["rank"].type_label = "relion.rankerator"
    write_scheme(selfpick, tmp_path / "selfpick")
    (tmp_path / "selfpick" / "report" / "job.star").unlink()
    found = [str(f) for f in check_scheme_dir(tmp_path / "selfpick")]
    assert any("report/job.star is missing" in f for f in found)
    assert any("relion.rankerator" in f for f in found)


def test_fork_on_a_non_bool_variable_is_rejected(selfpick):
    fork = next(e for e in selfpick.edges if e.input == "CHECK_more")
    fork.bool_variable = "iter"
    assert fork.is_fork
    assert any("fork variable 'iter' is not a bool" in e for e in errors(selfpick))


def test_edge_to_an_undefined_node_and_second_outgoing_edge_are_rejected(selfpick):
    selfpick.edges.append(Edge("pick", "nowhere"))
    found = errors(selfpick)
    assert any("'nowhere' is neither an operator nor a job" in e for e in found)
    assert any("2 outgoing edges" in e for e in found)


def test_scheme_name_without_trailing_slash_is_rejected(selfpick):
    selfpick.name = "Schemes/selfpick"
    assert any("trailing slash" in e for e in errors(selfpick))


def test_bool_columns_must_be_0_or_1(tmp_path):
    d = tmp_path / "s"
    shutil.copytree(SHIPPED["selfpick"], d)
    text = (d / "scheme.star").read_text().replace("class2d_gpu 1 1", "class2d_gpu Yes Yes")
    (d / "scheme.star").write_text(text)
    found = check_scheme_dir(d)
    assert len(found) == 1 and found[0].level == "error"
    assert "rlnSchemeBooleanVariableValue" in found[0].message and "'Yes'" in found[0].message


def test_alias_into_a_job_subdirectory_is_rejected(selfpick):
    selfpick.job_stars["report"].options["in_coords"] = "Schemes/selfpick/pick/Movies/mic_autopick.star"
    assert any("sub-directory" in e for e in errors(selfpick))


def test_alias_to_a_node_that_is_not_a_job_is_rejected(selfpick):
    selfpick.strings["best_particles"] = ("Schemes/selfpick/final/particles.star",) * 2
    assert any("final is not a job" in e for e in errors(selfpick))


def test_two_job_references_in_one_value_are_rejected(selfpick):
    selfpick.job_stars["train"].options["other_args"] = (
        "--a Schemes/selfpick/rank/x.star --b Schemes/selfpick/pick/autopick.star"
    )
    assert any("only the first job reference" in e for e in errors(selfpick))


def test_schemes_path_in_operator_input2_is_rejected(selfpick):
    selfpick.operators["SAVE_particles"] = Operator(
        "SAVE_particles", "copy_file", "undefined", "best_particles", "selected"
    )
    assert any("overwrites input1" in e for e in errors(selfpick))


def test_redirect_in_external_option_is_rejected_and_relion_exe_warned(selfpick):
    selfpick.job_stars["pick"].options["other_args"] = "> picks.log"
    selfpick.job_stars["train"].options["fn_exe"] = "/opt/relion_mytrainer"
    assert any("disables RELION's run.out" in e for e in errors(selfpick))
    assert any("--pipeline_control" in w for w in warnings(selfpick))


def test_exit_as_current_node_is_warned(selfpick):
    selfpick.current_node = "EXIT"
    assert any("run --reset first" in w for w in warnings(selfpick))


def test_class2d_iteration_mismatch_is_rejected(selfpick):
    selfpick.job_stars["class2d"].options["nr_iter_grad"] = "200"  # rank still reads run_it100_data.star
    assert any("ends at iteration 200" in e for e in errors(selfpick))


def test_read_star_address_is_checked(selfpick):
    selfpick.strings["summary_nsel"] = (
        "Schemes/selfpick/rank/rank_summary.star,data_rank_summary,rlnNrOfFoo",
    ) * 2
    found = errors(selfpick)
    assert any("without the data_ prefix" in e for e in found)
    assert any("rlnNrOfFoo is not a RELION label" in e for e in found)


def test_invalid_job_mode_is_rejected(selfpick):
    selfpick.jobs["rank"].mode = "restart"
    assert any("mode 'restart'" in e for e in errors(selfpick))


# ---------------------------------------------------------------------------------------------- operators, $$ and aliases


def test_literal_in_comparison_reads_as_zero_like_relion(tmp_path):
    s = Scheme("Schemes/t/", floats={"x": (5.0, 5.0), "ten": (10.0, 10.0)}, bools={"b": (False, False)})
    s.operators = {
        "GT": Operator("GT", "bool=gt", "b", "x", "10"),
        "GTV": Operator("GTV", "bool=gt", "b", "x", "ten"),
    }
    runner = OperatorRunner(s, tmp_path)
    runner.run("GT")
    assert s.bools["b"][0] is True  # 5 > 0: the literal 10 was read as 0
    runner.run("GTV")
    assert s.bools["b"][0] is False


def test_job_name_aliases_follow_relion(tmp_path, selfpick):
    text = "Schemes/selfpick/pick/autopick.star"
    assert substitute_jobnames(selfpick, text, tmp_path) == "pickautopick.star"  # before the job ever ran
    selfpick.jobs["pick"] = JobNode("pick", "External/job012/", "new", True)
    assert substitute_jobnames(selfpick, text, tmp_path) == "External/job012/autopick.star"
    with pytest.raises(SchemeError, match="cannot find Scheme STAR file"):
        substitute_jobnames(selfpick, "Schemes/prep/ctffind/micrographs_ctf.star", tmp_path)


def test_string_set_stores_the_substituted_path(tmp_path, selfpick):
    selfpick.jobs["pick"] = JobNode("pick", "External/job012/", "new", True)
    OperatorRunner(selfpick, tmp_path).run("SET_coords")
    assert selfpick.strings["coords"][0] == "External/job012/autopick.star"
    assert selfpick.strings["picked_coords"][0] == "Schemes/selfpick/pick/autopick.star"  # input kept


def test_dollar_substitution_types_and_float_format(selfpick):
    selfpick.floats["box_size"] = (1000000.0, 1000000.0)
    assert substitute_dollars(selfpick, "extract_size", "$$box_size", "relion.extract") == "1e+06"
    assert float_to_string(0.45) == "0.45" and float_to_string(50.0) == "50"
    assert substitute_dollars(selfpick, "use_gpu", "$$class2d_gpu", "relion.class2d") == "Yes"
    with pytest.raises(SchemeError, match="non-boolean"):
        substitute_dollars(selfpick, "param1_value", "$$improved", "relion.external")


def test_read_star_and_count_images_operators(tmp_path):
    import pandas as pd

    from relion_plugins.relion.star import write_star

    write_star(
        tmp_path / "sum.star",
        {"rank_summary": {"rlnGroupNrParticles": 812, "rlnParticleFigureOfMerit": 0.41}},
    )
    write_star(tmp_path / "p.star", {"particles": pd.DataFrame({"rlnCoordinateX": [1.0, 2.0, 3.0]})})
    s = Scheme(
        "Schemes/t/",
        floats={"n": (0.0, 0.0), "pres": (0.0, 0.0), "count": (0.0, 0.0)},
        strings={
            "a": ("sum.star,rank_summary,rlnGroupNrParticles",) * 2,
            "b": ("sum.star,rank_summary,rlnParticleFigureOfMerit",) * 2,
            "p": ("p.star",) * 2,
            "missing": ("nope.star",) * 2,
        },
    )
    s.operators = {
        "A": Operator("A", "float=read_star", "n", "a"),
        "B": Operator("B", "float=read_star", "pres", "b"),
        "C": Operator("C", "float=count_images", "count", "p"),
        "D": Operator("D", "float=count_images", "count", "missing"),
    }
    r = OperatorRunner(s, tmp_path)
    for op in "ABC":
        r.run(op)
    assert (s.floats["n"][0], s.floats["pres"][0], s.floats["count"][0]) == (812.0, 0.41, 3.0)
    r.run("D")
    assert s.floats["count"][0] == 0.0


# ---------------------------------------------------------------------------------------------- dry runs


def _jobs(result) -> list[str]:
    return [s.node for s in result.steps if s.kind == "job"]


def test_loop_continues_while_the_selection_improves(selfpick):
    selfpick.reset()
    r = dry_run(
        selfpick,
        {
            "READ_selected": ["500", "800", "820"],
            "READ_pres": ["0.2", "0.3", "0.3"],
            "READ_fraction": ["0.8"],
        },
        log=lambda _: None,
    )
    assert r.ended == "exit"
    assert _jobs(r).count("class2d") == 3 and _jobs(r).count("train") == 2
    assert _jobs(r)[:5] == ["log_pick", "extract", "class2d", "rank", "report"]


def test_loop_stops_at_max_iter(selfpick):
    selfpick.set_value("max_iter", 1, reset=True)
    selfpick.reset()
    r = dry_run(
        selfpick, {"READ_selected": ["500", "1000", "2000"], "READ_pres": ["0.2"]}, log=lambda _: None
    )
    assert _jobs(r).count("train") == 1 and _jobs(r).count("class2d") == 2


def test_loop_stops_when_nothing_is_selected(selfpick):
    selfpick.reset()
    r = dry_run(selfpick, {"READ_selected": ["0"]}, log=lambda _: None)
    assert "train" not in _jobs(r) and r.ended == "exit"


def test_loop_improvement_in_pres_alone_continues(selfpick):
    selfpick.reset()
    r = dry_run(
        selfpick,
        {
            "READ_selected": ["500", "400", "400"],
            "READ_pres": ["0.2", "0.3", "0.3"],
            "READ_fraction": ["0.8"],
        },
        log=lambda _: None,
    )
    assert _jobs(r).count("train") == 2


def test_on_the_fly_scheme_bootstraps_trains_and_switches_picker():
    otf = read_scheme(SHIPPED["selfpick_otf"])
    otf.reset()
    answers = {
        "HAS_ctffind": ["0", "1"],
        "COUNT_mics": ["10", "10", "20", "40", "80"],
        "READ_selected": ["400", "1200", "1500", "2600"],
        "HAS_model": ["0", "0", "1", "1", "1"],
    }
    r = dry_run(otf, answers, max_steps=120, log=lambda _: None)
    jobs = _jobs(r)
    assert jobs[:4] == ["log_pick", "extract_log", "class2d", "rank"]
    assert jobs.count("train") == 2  # first when >= 1000 selected, again once the selection doubled
    assert "pick" in jobs and jobs.index("pick") > jobs.index("train")


# ---------------------------------------------------------------------------------------------- install


def _project(tmp_path, version=4):
    from relion_plugins.simulate.project import write_pipeline

    proj = tmp_path / "proj"
    proj.mkdir()
    write_pipeline(proj / "default_pipeline.star", version)
    return proj


def test_install_renames_sets_variables_and_version(tmp_path):
    proj = _project(tmp_path, version=4)
    target = install_scheme(
        SHIPPED["selfpick_otf"], proj, name="proc", variables=[("particle_diameter", "180"), ("class2d_gpu", "false")],
        job_options=[("class2d:nr_pool", "10")],
    )  # fmt: skip
    s = read_scheme(target)
    assert s.name == "Schemes/proc/" and target == proj / "Schemes" / "proc"
    assert s.floats["particle_diameter"] == (180.0, 180.0) and s.bools["class2d_gpu"] == (False, False)
    assert s.strings["relion_version"][0] == "4"
    assert s.strings["model_file"][0] == "Schemes/proc/train/model.pt"
    assert s.job_stars["extract"].options["coords_suffix"] == "Schemes/proc/pick/autopick.star"
    assert s.job_stars["class2d"].options["nr_pool"] == "10"
    assert s.current_node == "WAIT"
    assert check_scheme_dir(target) == []


def test_install_refuses_bad_requests_and_leaves_nothing(tmp_path):
    proj = _project(tmp_path)
    with pytest.raises(SchemeError, match="no variable 'nope'"):
        install_scheme(SHIPPED["selfpick"], proj, variables=[("nope", "1")])
    with pytest.raises(SchemeError, match="not a number"):
        install_scheme(SHIPPED["selfpick"], proj, variables=[("box_size", "big")])
    with pytest.raises(SchemeError, match="does not pass the check"):
        install_scheme(SHIPPED["selfpick"], proj, job_options=[("pick:param2_value", "$$improved")])
    assert not (proj / "Schemes" / "selfpick").exists()
    assert [p.name for p in (proj / "Schemes").iterdir()] == [] if (proj / "Schemes").exists() else True
    install_scheme(SHIPPED["selfpick"], proj)
    with pytest.raises(SchemeError, match="exists; use --force"):
        install_scheme(SHIPPED["selfpick"], proj)
    (proj / ".relion_lock_scheme_selfpick").mkdir()
    with pytest.raises(SchemeError, match="is running"):
        install_scheme(SHIPPED["selfpick"], proj, force=True)


def test_cli_check_install_and_dry_run(tmp_path):
    proj = _project(tmp_path)

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "relion_plugins.cli", *a], capture_output=True, text=True
        )

    assert run("scheme", "check").returncode == 0
    res = run("scheme", "install", "selfpick", "--project", str(proj), "--set", "max_iter=1")
    assert res.returncode == 0, res.stderr
    res = run("scheme", "dry-run", str(proj / "Schemes" / "selfpick"), "--answer", "READ_selected=300,600")
    assert res.returncode == 0 and "jobs run: log_pick -> extract" in res.stdout
    broken = copy.deepcopy(read_scheme(proj / "Schemes" / "selfpick"))
    broken.operators["NEXT_iter"].input2 = "1"
    write_scheme(broken, tmp_path / "broken" / "selfpick")
    res = run("scheme", "check", str(tmp_path / "broken" / "selfpick"))
    assert res.returncode == 1 and "numeric literal" in res.stdout


# ---------------------------------------------------------------------------------------------- commands


def test_commands_match_relion_4_5():
    opts = {"fn_exe": "rp-pu-pick", "in_mic": "CtfFind/job003/micrographs_ctf.star", "param1_label": "model",
            "param1_value": "External/job010/model.pt", "param2_label": "", "nr_threads": "4", "other_args": "--x 1"}  # fmt: skip
    assert external_command(opts, "External/job011/") == (
        "rp-pu-pick --o External/job011/ --in_mics CtfFind/job003/micrographs_ctf.star "
        "--model External/job010/model.pt --j 4 --x 1"
    )
    ext = {"star_mics": "m.star", "coords_suffix": "External/job004/autopick.star", "extract_size": "256",
           "do_rescale": "Yes", "rescale": "64", "do_norm": "Yes", "bg_diameter": "-1", "do_invert": "Yes"}  # fmt: skip
    cmd = extract_command(ext, "Extract/job005/", is_continue=True, relion31=False)
    assert cmd[cmd.index("--coord_list") + 1] == "External/job004/autopick.star"
    assert cmd[cmd.index("--bg_radius") + 1] == "24" and "--only_do_unfinished" in cmd
    cmd31 = extract_command(ext, "Extract/job005/", is_continue=False)
    assert cmd31[cmd31.index("--coord_suffix") + 1] == "_autopick.star"
    c2 = {
        "fn_img": "p.star",
        "do_grad": "Yes",
        "nr_iter_grad": "100",
        "particle_diameter": "180",
        "nr_classes": "50",
    }
    cmd = class2d_command(c2, "Class2D/job006/", relion31=False)
    assert "--grad" in cmd and cmd[cmd.index("--iter") + 1] == "100"
    with pytest.raises(SchemeError, match="VDAM"):
        class2d_command(c2, "Class2D/job006/")


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_refine") is None, reason="Debian RELION not installed")
def test_selfpick_loop_end_to_end_with_debian_relion(tmp_path):
    """Every node of the loop in the scheme's order, extraction and 2D by RELION 3.1 (about 3 min on 2 cores)."""
    from relion_plugins.scheme_cli import LoopSettings, loop_history, selfpick_demo

    proj = tmp_path / "loop"
    lines: list[str] = []
    rc = selfpick_demo(proj, LoopSettings(max_iter=1), log=lines.append, use_schemer=False)
    log = "\n".join(lines)
    assert rc == 0, log
    history = loop_history(proj)
    assert history is not None and len(history) >= 2, log  # LoG iteration + at least one retrained picker
    scheme = read_scheme(proj / "Schemes" / "selfpick")
    assert scheme.current_node == "EXIT" and "CHECK_more: go_on = False" in log  # stopped by its fork
    first, last = history.iloc[0], history.iloc[-1]
    # The retrained picker's selection is better against the truth than the LoG bootstrap's, and the final
    # selection at the documented path is that iteration's.
    assert last["rpSelectionF1"] > first["rpSelectionF1"] + 0.02, history.to_string()
    assert last["rpPicksF1"] > first["rpPicksF1"], history.to_string()
    saved = (proj / "SelfPick" / "autopick.star").read_text()
    assert saved == (proj / last["rpPickJob"] / "autopick.star").read_text()
    assert (proj / "SelfPick" / "particles.star").is_file() and (
        proj / "SelfPick" / "autopick.star"
    ).is_file()


def test_relion_it_example_options_fit_the_on_the_fly_scheme():
    """Every proc__VAR / proc__JOB__OPTION key of the example file exists in selfpick_otf installed as proc."""
    import ast

    path = Path(__file__).resolve().parents[1] / "examples" / "relion_it_options.py"
    options = ast.literal_eval(path.read_text())
    otf = read_scheme(SHIPPED["selfpick_otf"])
    for key in options:
        parts = key.split("__")
        if parts[0] != "proc":
            continue
        if len(parts) == 2:
            assert otf.variable_type(parts[1]) is not None, key
        else:
            assert parts[2] in otf.job_stars[parts[1]].options, key


def test_picker_variable_chooses_the_executables(selfpick):
    """picker = pu (PU picker) or detr (transformer picker): string=join builds rp-<picker>-train / -pick."""
    from relion_plugins.relion.scheme_run import DryRunExecutor, SchemeWalker

    selfpick.set_value("picker", "detr", reset=True)
    selfpick.reset()
    r = dry_run(selfpick, {"READ_selected": ["100"]}, log=lambda _: None)
    assert "train" in _jobs(r)
    walker = SchemeWalker(".", selfpick, DryRunExecutor(), log=lambda _: None)
    assert walker.prepare_job("train")[1]["fn_exe"] == "rp-detr-train"
    assert walker.prepare_job("pick")[1]["fn_exe"] == "rp-detr-pick"
    assert walker.prepare_job("train")[1]["in_part"].endswith("particles.star")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_scheme_external_jobs_only_set_parameters_their_executable_knows(name):
    """Every paramN_label of every External node is a flag of its executable's --help (fn_exe via $$ too)."""
    from relion_plugins.cli import EXECUTABLES
    from relion_plugins.relion.scheme_ops import dollar_names

    scheme = read_scheme(SHIPPED[name])
    helps: dict[str, str] = {}
    for job, star in scheme.job_stars.items():
        if star.type_label != "relion.external":
            continue
        exe = star.options["fn_exe"]
        for var in dollar_names(exe):
            exe = exe.replace("$$" + var, scheme.strings[var][0])
        assert exe in EXECUTABLES, (job, exe)
        if exe not in helps:
            helps[exe] = subprocess.run(
                [sys.executable, "-m", "relion_plugins.jobs", EXECUTABLES[exe], "--help"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
        for i in range(1, 11):
            label = star.options.get(f"param{i}_label", "")
            if label:
                assert f"--{label} " in helps[exe], (job, exe, label)
        for word in star.options.get("other_args", "").split():
            if word.startswith("--"):
                assert f"{word} " in helps[exe], (job, exe, word)
