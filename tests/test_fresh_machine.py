"""The README's two commands are what a new user runs, and the second is exactly what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines()]


def test_ci_runs_exactly_the_readme_test_command():
    demo, tests = readme_commands()
    assert tests == "dev/install.sh && .venv/bin/python -m pytest -q"
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == tests


def test_the_readme_commands_use_the_environment_install_sh_makes():
    install = (REPO / "dev" / "install.sh").read_text()
    assert "python3 -m venv .venv" in install
    assert ".venv/bin/python -m pip install" in install
    for command in readme_commands():
        assert command.startswith("dev/install.sh && .venv/bin/python ")
