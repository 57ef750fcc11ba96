"""The docs cannot drift from the code: their reference tables are what dev/docs.py generates
from it, and every example command in README.md and docs/*.md runs.

The examples run as a reader would type them, with bash, one command after the other in page
order, in a scratch copy of the tree (its files are links to this one; README.md and docs/ are
copies, so `dev/docs.py` rewrites the copies). `python3` is the suite's interpreter. The copier
reads the suite's throwaway PostgreSQL (SOURCE_DSN and TARGET_DSN: a DSN written in a command
is replaced by the test's), whose source holds the tables the examples name (EXAMPLE_TABLES).
The AWS scripts run against moto_server, with fake credentials, the secrets of
tests/aws_helpers.py (`...` in an `export` stands for yours) and its deploy.toml, which is what
`cp deploy.example.toml deploy.toml` is followed by: the reader's edit. A command must exit 0,
or the status its comment names: "(exit 2: changes pending)". A block that cannot run here is
marked right before it with `<!-- not run: reason -->`, and NOT_RUN counts them per page.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import requests
from aws_helpers import (
    REGION,
    SECRETS,
    run_to_end,
    set_fake_aws_env,
    subprocess_env,
    with_canned_jobs,
    write_config,
)

import deploy
import setup_aws
from dev import docs as generator

REPO = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *(f"docs/{path.name}" for path in sorted((REPO / "docs").glob("*.md")))]
# The blocks each page marks `<!-- not run: ... -->`; every other ```sh block runs.
NOT_RUN = {
    "README.md": 1,  # its first block: the install and the demo use the machine, CI runs them
    "docs/aws.md": 1,  # docker build and push
    "docs/operations.md": 1,  # the AWS CLI against a real account's Logs Insights
    "docs/development.md": 1,  # parts of the test suite itself
}
LANGUAGES = {"sh", "text", "json"}
EXAMPLE_TABLES = {
    "orders": "id int PRIMARY KEY, total numeric",
    "order_lines": "id int PRIMARY KEY, order_id int, quantity int",
    "customers": "id int PRIMARY KEY, name text",
    "events": "id bigint PRIMARY KEY, payload jsonb",
    "sales.invoices": "id int PRIMARY KEY, amount numeric",
    '"Mixed Case"': "id int PRIMARY KEY",
}
NIGHT = "2026-11-27"  # the night operations.md reports on


# --------------------------------------------------------------------------- the pages' blocks


@dataclass
class Block:
    page: str
    line: int
    language: str
    lines: list[str]
    not_run: str | None  # the reason given in the page, if marked


def blocks(page: str) -> list[Block]:
    lines = (REPO / page).read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = re.fullmatch(r"```(\S*)\s*", lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        marked = re.fullmatch(r"<!-- not run: (.+) -->", before)
        found.append(Block(page, i + 1, opening.group(1), lines[i + 1:end],
                           marked.group(1) if marked else None))
        i = end + 1
    return found


def commands(block: Block) -> list[str]:
    """Each command of a block: backslash-continued lines joined, comment lines left out."""
    found, current = [], []
    for line in block.lines:
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current.append(line)
        if not line.rstrip().endswith("\\"):
            found.append("\n".join(current))
            current = []
    assert not current, f"{block.page}:{block.line}: a command ends in a backslash"
    return found


def comment(command: str) -> str:
    """The comment of a command's last line: after a # that starts a word, outside quotes."""
    quote, last = None, command.splitlines()[-1]
    for i, ch in enumerate(last):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or last[i - 1].isspace()):
            return last[i + 1:]
    return ""


def expected_status(command: str) -> int:
    named = re.search(r"\(exit (\d+)\b", comment(command))
    return int(named.group(1)) if named else 0


# --------------------------------------------------------------------------- where they run


def scratch_tree(tmp_path: Path) -> Path:
    """A copy of the tree whose files are links to this one's, but for the pages."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".git", ".local", "deploy.toml", "README.md", "docs"):
            (tree / entry.name).symlink_to(entry)
    shutil.copy(REPO / "README.md", tree / "README.md")
    shutil.copytree(REPO / "docs", tree / "docs")
    shims = tree / ".bin"
    shims.mkdir()
    for name in ("python3", "python"):
        (shims / name).write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        (shims / name).chmod(0o755)
    write_config(tree / "deploy.toml")
    return tree


def example_tables(dbs) -> None:
    dbs.source("CREATE SCHEMA sales")
    for table, columns in EXAMPLE_TABLES.items():
        dbs.source(f"CREATE TABLE {table} ({columns})")
        dbs.source(f"INSERT INTO {table} (id) SELECT generate_series(1, 200)")


def example_env(dbs, tree: Path) -> dict[str, str]:
    """The environment without this machine's copier and AWS settings, with the test's
    databases and `python3` the suite's interpreter."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("TABLES", "PG_MAJOR") and not name.startswith(("COPIER_", "AWS_"))}
    return env | {"SOURCE_DSN": dbs.source_dsn, "TARGET_DSN": dbs.target_dsn,
                  "PATH": f"{tree / '.bin'}:{env['PATH']}"}


def with_test_dsns(command: str, env: dict[str, str]) -> str:
    return re.sub(r"\b(SOURCE_DSN|TARGET_DSN)=('[^']*'|\"[^\"]*\"|\S+)",
                  lambda m: f"{m.group(1)}={shlex.quote(env[m.group(1)])}", command)


def exported(command: str, env: dict[str, str]) -> None:
    for assignment in shlex.split(command.split("#")[0])[1:]:
        name, _, value = assignment.partition("=")
        if value != "...":  # a placeholder for the reader's secret: the test's stays
            env[name] = value


def run_example(command: str, block: Block, env: dict[str, str], tree: Path) -> None:
    if command.startswith("export "):
        exported(command, env)
        return
    done = subprocess.run(["bash", "-c", with_test_dsns(command, env)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == expected_status(command), (
        f"{block.page}:{block.line}: {command}\nexit {done.returncode}\n"
        f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}")
    if command.split("#")[0].split() == ["cp", "deploy.example.toml", "deploy.toml"]:
        assert (tree / "deploy.toml").read_text() == (REPO / "deploy.example.toml").read_text()
        write_config(tree / "deploy.toml")  # the reader's edit


# --------------------------------------------------------------------------- a recorded night


def one_recorded_night(moto_server, tree: Path, monkeypatch) -> None:
    """What operations.md reports on: setup's deployment, and one night (NIGHT) that succeeded,
    run in moto's engine with its builds stood in for, and its jobs' log lines. moto_server runs
    one execution of a machine (a second start fails to copy the first), so one night."""
    set_fake_aws_env(monkeypatch, endpoint=moto_server.url)
    moto_server.configure({"lambda": {"use_docker": False},
                           "stepfunctions": {"execute_state_machine": True}})
    assert setup_aws.main(["--config", str(tree / "deploy.toml")]) == 0
    sfn = boto3.client("stepfunctions")
    machine = f"arn:aws:states:{REGION}:123456789012:stateMachine:nightly-copy"
    deployed = json.loads(sfn.describe_state_machine(stateMachineArn=machine)["definition"])

    def build(job: str) -> dict:
        return {"Build": {"Id": f"nightly-copy:{job}", "BuildStatus": "SUCCEEDED",
                          "Logs": {"DeepLink": f"https://console.example/{job}"},
                          "StartTime": f"{NIGHT}T03:00:00Z", "EndTime": f"{NIGHT}T03:40:00Z"}}

    sfn.update_state_machine(stateMachineArn=machine,
                             definition=json.dumps(with_canned_jobs(deployed, set(), build)))
    requests.post(f"{moto_server.url}/moto-api/static/lambda-simple/response",
                  json={"results": [json.dumps({"posted": True})], "region": REGION}, timeout=5)
    assert run_to_end(sfn, machine, NIGHT, json.dumps({"date": NIGHT}))["status"] == "SUCCEEDED"
    sfn.update_state_machine(stateMachineArn=machine, definition=json.dumps(deployed))

    logs, now = boto3.client("logs"), int(time.time() * 1000)
    for number, tables in enumerate(deploy.plan.assignment_of(deployed), start=1):
        lines = [{"event": "table_copied", "table": table, "job": f"job-{number}",
                  "rows": 1000 * (i + 1), "bytes": 10**6 * (i + 1), "seconds": 60.0 * (i + 1),
                  "run": NIGHT} for i, table in enumerate(tables)]
        lines.append({"event": "run_finished", "tables": len(tables), "failed": 0,
                      "seconds": sum(line["seconds"] for line in lines), "run": NIGHT})
        stream = f"nightly-copy/build-{number}"
        logs.create_log_stream(logGroupName="/aws/codebuild/nightly-copy", logStreamName=stream)
        logs.put_log_events(logGroupName="/aws/codebuild/nightly-copy", logStreamName=stream,
                            logEvents=[{"timestamp": now + i, "message": json.dumps(line)}
                                       for i, line in enumerate(lines)])


PREPARED = {"docs/operations.md": one_recorded_night}


# --------------------------------------------------------------------------- the tests


def runnable(block: Block) -> bool:
    return block.language == "sh" and not block.not_run


# The pages with examples to run (a page of prose and tables has none), and those whose
# examples need AWS (moto_server): the others run in any test worker.
EXAMPLE_PAGES = [page for page in PAGES if any(runnable(block) for block in blocks(page))]
AWS_COMMAND = re.compile(r"\b(setup_aws|teardown_aws)\.py|\boperations\.py +(report|rebalance)")
AWS_PAGES = [page for page in EXAMPLE_PAGES if any(
    AWS_COMMAND.search(command) for block in filter(runnable, blocks(page))
    for command in commands(block))]


@pytest.mark.parametrize("page", [page for page in EXAMPLE_PAGES if page not in AWS_PAGES])
def test_every_example_runs(page, dbs, tmp_path):
    tree = scratch_tree(tmp_path)
    example_tables(dbs)
    run_page(page, example_env(dbs, tree), tree)


@pytest.mark.parametrize("page", AWS_PAGES)
def test_every_example_runs_against_moto_server(page, dbs, moto_server, tmp_path, monkeypatch):
    tree = scratch_tree(tmp_path)
    example_tables(dbs)
    aws = {name: value for name, value in subprocess_env(moto_server.url).items()
           if name.startswith("AWS_") or name in SECRETS}  # fake credentials, moto_server
    env = example_env(dbs, tree) | aws
    prepare = PREPARED.get(page)
    if prepare is None:
        run_page(page, env, tree)
        return
    engine_off = {"lambda": requests.get(f"{moto_server.url}/moto-api/config", timeout=5).json()[
        "lambda"], "stepfunctions": {"execute_state_machine": False}}
    try:
        prepare(moto_server, tree, monkeypatch)
        run_page(page, env, tree)
    finally:
        moto_server.configure(engine_off)  # as the other tests of this moto_server expect it


def run_page(page: str, env: dict[str, str], tree: Path) -> None:
    for block in filter(runnable, blocks(page)):
        for command in commands(block):
            run_example(command, block, env, tree)


@pytest.mark.parametrize("page", PAGES)
def test_only_the_marked_blocks_are_not_run(page):
    """A command cannot hide: every block names its language, and the blocks left out are
    exactly the ones the page marks, with a reason, as NOT_RUN counts them."""
    found = blocks(page)
    assert [b.line for b in found if b.language not in LANGUAGES] == [], page
    assert [b.line for b in found if b.not_run and b.language != "sh"] == [], page
    assert sum(1 for b in found if b.not_run) == NOT_RUN.get(page, 0), page


def test_the_generated_tables_are_the_code_s():
    assert generator.stale_blocks(generator.pages()) == []


def test_a_stale_table_is_named_and_fails_the_check(tmp_path):
    tree = scratch_tree(tmp_path)
    page = tree / "docs" / "copier.md"
    page.write_text(page.read_text().replace("| `--fail-fast` |", "| `--fail-slow` |"))
    check = [sys.executable, "dev/docs.py", "--check"]
    done = subprocess.run(check, cwd=tree, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr.splitlines()) == (1, [
        "dev/docs.py: stale block copier.md: options: run .venv/bin/python dev/docs.py"])
    done = subprocess.run(check[:2], cwd=tree, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "rewrote docs/copier.md\n")
    assert page.read_text() == (REPO / "docs" / "copier.md").read_text()


def test_a_block_without_a_generator_or_a_generator_without_a_block_is_an_error(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- generated by dev/docs.py: nothing -->\n<!-- end of generated nothing -->\n")
    with pytest.raises(SystemExit, match="no generator for block 'nothing'"):
        generator.write_blocks([page])
    assert "(no page): options" in generator.stale_blocks([page])


def test_the_readme_fits_on_two_screens():
    readme = re.sub(r"<!--.*?-->", "", (REPO / "README.md").read_text(), flags=re.S)  # unseen
    before_commands = readme.split("```sh")[0].split("\n", 1)[1]
    assert len(readme.split()) <= 1500
    assert len(before_commands.split()) < 80
    assert not re.search(r"\bsession \d", readme, re.I)
    layout = readme.split("## Layout")[1]
    assert "`runlog.py`" in layout


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but - and _ dropped, spaces -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_pages_leads_somewhere():
    for page in PAGES:
        text = (REPO / page).read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, fragment = target.partition("#")
            linked = (REPO / page).parent / path if path else REPO / page
            assert linked.exists(), f"{page}: {target}"
            if fragment:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
                assert fragment in map(anchor, headings), f"{page}: {target}"
