"""Every shipped job.star loads as RELION reads it, and its executable's --help knows every parameter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relion_plugins.cli import EXECUTABLES
from relion_plugins.relion.star import read_star
from relion_plugins.resources import resource_dir

TEMPLATES = sorted(resource_dir("job_templates").glob("*/job.star"))
EXTERNAL_KEYS = {
    "fn_exe",
    "in_mov",
    "in_mic",
    "in_part",
    "in_coords",
    "in_3dref",
    "in_mask",
    "nr_threads",
    "do_queue",
    "queuename",
    "qsub",
    "qsubscript",
    "min_dedicated",
    "other_args",
}
EXTERNAL_KEYS |= {f"param{i}_{kind}" for i in range(1, 11) for kind in ("label", "value")}


def test_templates_exist():
    assert TEMPLATES, "no job templates shipped"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.parent.name)
def test_template_is_a_valid_external_job(path: Path):
    assert b"\r\n" not in path.read_bytes()  # RELION rejects CR+LF
    blocks = read_star(path)
    assert blocks["job"]["rlnJobTypeLabel"] == "relion.external"
    options = dict(
        zip(
            blocks["joboptions_values"]["rlnJobOptionVariable"],
            blocks["joboptions_values"]["rlnJobOptionValue"],
        )
    )
    assert set(options) <= EXTERNAL_KEYS, set(options) - EXTERNAL_KEYS
    exe = options["fn_exe"]
    assert exe in EXECUTABLES and "relion_" not in exe
    help_text = subprocess.run(
        [sys.executable, "-m", "relion_plugins.jobs", EXECUTABLES[exe], "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for i in range(1, 11):
        label = options.get(f"param{i}_label", "")
        if label:
            assert f"--{label} " in help_text, f"{path}: --{label} is not a parameter of {exe}"
            value = options.get(f"param{i}_value", "")
            assert value != "" and "$$" not in value  # a template must run as loaded
