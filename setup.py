"""Build hook: copy the top-level profiles/*.toml into the package as gptoss_lite/_profiles.

Everything else about the package is in pyproject.toml. The top-level `profiles/` folder stays
the one source of truth; a checkout reads it directly, an installed wheel reads the copy.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithProfiles(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib, "gptoss_lite", "_profiles")
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(Path(__file__).parent.joinpath("profiles").glob("*.toml")):
            shutil.copy2(path, target / path.name)


setup(cmdclass={"build_py": BuildPyWithProfiles})
