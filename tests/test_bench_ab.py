"""bench/ab.py runs another revision's copier as that revision had it: with the project's modules it
imports from the same revision, and --copy-unchanged only when that copier has the option."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import ab  # noqa: E402  (bench/ab.py)


def parent_of_first_commit(*log_options: str) -> str:
    """The revision just before the oldest commit git log selects."""
    commits = subprocess.run(["git", "-C", str(REPO), "log", "--format=%H", *log_options],
                             check=True, capture_output=True, text=True).stdout.split()
    return f"{commits[-1]}^"


def test_the_base_runs_with_its_own_runlog_and_without_the_option_it_lacks(tmp_path):
    before_the_option = parent_of_first_commit("-S--copy-unchanged", "--", "copier.py")
    script = ab.checkout_copier(before_the_option, tmp_path / "base")
    assert (tmp_path / "base" / "runlog.py").read_text() == subprocess.run(
        ["git", "-C", str(REPO), "show", f"{before_the_option}:runlog.py"], check=True,
        capture_output=True, text=True).stdout
    assert not ab.copies_unchanged_on_request(script)  # its --help runs: its imports are all there
    assert ab.copies_unchanged_on_request(REPO / "copier.py")


def test_a_base_older_than_runlog_is_its_copier_alone(tmp_path):
    before_runlog = parent_of_first_commit("--diff-filter=A", "--", "runlog.py")
    ab.checkout_copier(before_runlog, tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*.py")) == ["copier.py"]


def test_imports_are_found_wherever_they_are():
    text = "import os, runlog.x\nfrom deploy.plan import a\nfrom . import local\ndef f():\n    import boto3\n"
    assert ab.imported_names(text) == {"os", "runlog", "deploy", "boto3"}
