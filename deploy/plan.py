"""Which tables each job copies: split by size (the copier's own balancing), or the split the
deployed state machine already has."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

import copier
from deploy.aws import Aws, AwsError, describe_error, error_code
from deploy.names import Names, job_name
from deploy.settings import Settings, SettingsError, secret_env_var


def table_weights(settings: Settings, out: Callable[[str], None]) -> tuple[dict[str, float], str]:
    """Source table sizes when the source is reachable, else the configured weights, else 1."""
    password = os.environ.get(secret_env_var("source", "password"))
    if settings.source.get("host") and password:
        import psycopg2

        params = {**{k: v for k, v in copier.CONNECTION_SETTINGS.items() if v is not None},
                  **settings.source, "password": password}
        try:  # the copier's own connection: its keepalives, session settings, version check
            conn = copier.connect({**params, "connect_timeout": 5}, "source")
        except psycopg2.Error as err:
            out(f"source not reachable ({copier.first_line(err)}); using configured weights")
        except copier.CopierError as err:  # a server too old for the copier
            raise SettingsError(f"source: {err}") from err
        else:
            try:
                sizes = copier.source_table_sizes(conn, ",".join(settings.tables))
            except copier.CopierError as err:  # an unknown table: say so before creating
                raise SettingsError(f"tables: {err}") from err
            finally:
                conn.close()
            # keyed by the source's qualified names, in the order of the list given
            return dict(zip(settings.tables, map(float, sizes.values()), strict=True)), (
                "source table sizes")
    if settings.table_weights:
        return ({t: float(settings.table_weights.get(t, 1)) for t in settings.tables},
                "configured table_weights")
    return {t: 1.0 for t in settings.tables}, "equal weights"




def split_tables_value(text: str) -> list[str]:
    """A TABLES value back into the names it was joined from, by the copier's own parser."""
    return [".".join(f'"{part.replace(chr(34), chr(34) * 2)}"' if quoted else part
                     for part, quoted in parts)
            for parts in copier.split_table_list(text)]


def _tables_value(node: Any) -> str | None:
    """The first {"Name": "TABLES", "Value": ...} under node: the same for every runner."""
    if isinstance(node, dict):
        if node.get("Name") == "TABLES" and isinstance(node.get("Value"), str):
            return node["Value"]
        children = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _tables_value(child)
        if found is not None:
            return found
    return None


def assignment_of(definition: dict) -> list[list[str]] | None:
    """The tables of each job in a rendered nightly definition, or None if it has none."""
    branches = definition.get("States", {}).get(Names.copy_state, {}).get("Branches") or []
    values = [_tables_value(branch) for branch in branches]
    if not values or None in values:
        return None
    return [split_tables_value(value) for value in values]


def deployed_assignment(aws: Aws, names: Names) -> list[list[str]] | None:
    """The table assignment of the deployed nightly state machine (None: not deployed)."""
    arn = aws.arn("states", f"stateMachine:{names.state_machine}")
    try:
        found = aws.client("stepfunctions").describe_state_machine(stateMachineArn=arn)
    except (ClientError, BotoCoreError) as err:
        if isinstance(err, ClientError) and error_code(err) == "StateMachineDoesNotExist":
            return None
        raise AwsError(f"state machine {names.state_machine}: {describe_error(err)}") from err
    return assignment_of(json.loads(found["definition"]))


def plan_jobs(settings: Settings, out: Callable[[str], None],
              aws: Aws | None = None) -> list[list[str]]:
    """Split the tables over the jobs by weight, or keep the deployed split when it covers
    the same tables with the same number of jobs: `operations.py rebalance --apply` sets it
    from measured times, and a plain setup must not silently undo that."""
    weights, basis = table_weights(settings, out)  # also checks the list on a reachable source
    jobs = min(settings.jobs, len(settings.tables))
    if jobs < settings.jobs:
        out(f"only {len(settings.tables)} tables: using {jobs} jobs instead of {settings.jobs}")
    deployed = deployed_assignment(aws, Names(settings.prefix)) if aws else None
    if deployed and len(deployed) == jobs and sorted(
            t for job in deployed for t in job) == sorted(settings.tables):
        out("table assignment kept from the deployed state machine (same tables and jobs; "
            "operations.py rebalance changes it):")
        for number, tables in enumerate(deployed, start=1):
            out(f"  {job_name(number)}  {','.join(tables)}")
        return deployed
    assignment = copier.assign_to_jobs(weights, jobs)
    out(f"table assignment ({basis}):")
    for number, tables in enumerate(assignment, start=1):
        load = sum(weights[t] for t in tables)
        out(f"  {job_name(number)}  weight {load:g}  {','.join(tables)}")
    return assignment
