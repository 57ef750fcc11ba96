"""The runners: the custom image (Dockerfile, ECR repository, NO_SOURCE project) and AWS Batch.

Docker cannot run here, so the Dockerfile is checked by reading it; the AWS side runs under
moto (Batch with use_docker False: resources only, no container ever starts).
"""

from __future__ import annotations

import json
import re
import shlex

from aws_helpers import ROOT

import deployment

# --- the Dockerfile, read statically


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(item.split(None, 1)[0].upper(), item.split(None, 1)[1]) for item in logical]


def test_dockerfile_base_is_a_slim_python_311_pinned_by_tag():
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM"
    froms = [args for op, args in instructions if op == "FROM"]
    assert len(froms) == 1
    image, _, tag = froms[0].partition(":")
    assert image == "python"
    assert tag.startswith("3.11-slim") or tag.startswith("3.11.") and "slim" in tag
    assert tag != "latest"


def test_dockerfile_installs_the_pinned_requirements_without_a_cache():
    instructions = dockerfile_instructions()
    copies = [args for op, args in instructions if op == "COPY"]
    runs = [args for op, args in instructions if op == "RUN"]
    assert any(shlex.split(c)[0] == "requirements.txt" for c in copies)
    (install,) = [r for r in runs if "pip install" in r]
    words = shlex.split(install)
    assert "--no-cache-dir" in words and words[words.index("-r") + 1] == "requirements.txt"
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][\w.]*", line.strip()), line


def test_dockerfile_bakes_in_the_copier_runs_it_as_a_user_and_needs_only_tables():
    instructions = dockerfile_instructions()
    ops = [op for op, _ in instructions]
    copied = [shlex.split(args)[0] for op, args in instructions if op == "COPY"]
    assert "copier.py" in copied and not any(src in (".", "./") for src in copied)
    (user,) = [args for op, args in instructions if op == "USER"]
    assert user.strip() not in ("root", "0")
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN")
    (workdir,) = [args for op, args in instructions if op == "WORKDIR"]
    # CodeBuild ignores ENTRYPOINT and runs the inline buildspec, which cds to /app
    assert workdir == "/app" and "cd /app" in deployment.ECR_BUILDSPEC
    (entrypoint,) = [args for op, args in instructions if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["python", "copier.py"]
    assert not [op for op in ops if op in ("CMD", "ADD", "EXPOSE")]


def test_dockerignore_keeps_the_context_to_what_the_image_needs():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert sorted(lines[1:]) == ["!copier.py", "!requirements.txt"]
