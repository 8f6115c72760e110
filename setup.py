"""Build hook: ship the top-level ``schemes/`` and ``job_templates/`` inside the wheel.

They live beside the package (users and RELION look for them there in a checkout), so ``build_py`` copies
them to ``relion_plugins/resources/`` in the build tree; ``relion_plugins.resources`` finds either place.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

RESOURCE_DIRS = ("schemes", "job_templates")


class BuildPyWithResources(build_py):
    def run(self):
        super().run()
        here = Path(__file__).resolve().parent
        for name in RESOURCE_DIRS:
            source = here / name
            target = Path(self.build_lib) / "relion_plugins" / "resources" / name
            if target.exists():
                shutil.rmtree(target)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithResources})
