"""Which tables each job copies: split by size (the copier's own balancing), or the split the
deployed state machine already has."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

import runlog
from deploy.aws import Aws, AwsError, describe_error, error_code
from deploy.names import Names, job_name
from deploy.rules_file import RulesFile
from deploy.settings import Settings, SettingsError, secret_env_var

SOURCE_SIZES = "source table sizes"


def warn_on_stderr(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


class SourceError(Exception):
    """The source database failed while its tables were measured: run again when it answers."""


@dataclass
class Weights:
    """What the split is planned from: a weight per configured table (bytes on the source,
    configured weights or 1), what they are, and the tables the copier can cut into slices
    (a single-column integer key; known only when the source was reachable)."""

    weights: dict[str, float]
    basis: str
    sliceable: frozenset[str] = frozenset()


def table_weights(settings: Settings, out: Callable[[str], None],
                  rules: RulesFile | None = None) -> Weights:
    """Source table sizes when the source is reachable, else the configured weights, else 1.
    A reachable source also checks the table list and the rules."""
    password = os.environ.get(secret_env_var("source", "password"))
    if settings.source.get("host") and password:
        # Only here: the copier's own reading of the sizes, and psycopg2 with it.
        import psycopg2

        import copier

        params = {**{k: v for k, v in runlog.CONNECTION_SETTINGS.items() if v is not None},
                  **settings.source, "password": password}
        try:  # the copier's own connection: its keepalives, session settings, version check
            conn = copier.connect({**params, "connect_timeout": 5}, "source")
        except psycopg2.Error as err:
            out(f"source not reachable ({runlog.first_line(err)}); using configured weights")
        except runlog.CopierError as err:  # a server too old for the copier
            raise SettingsError(f"source: {err}") from err
        else:
            tables_text = ",".join(settings.tables)
            try:
                try:
                    sizes = copier.source_table_sizes(conn, tables_text)
                    sliceable = copier.sliceable_tables(conn, tables_text)
                except runlog.CopierError as err:  # an unknown table: say so before creating
                    raise SettingsError(f"tables: {err}") from err
                if rules:
                    check_rules_on_source(conn, rules, set(sizes))
            except psycopg2.Error as err:  # it answered, then went away (a restart, a failover)
                raise SourceError(f"source database: {runlog.first_line(err)}: run again when it "
                                  f"answers (it is [source] in the config, with "
                                  f"{secret_env_var('source', 'password')})") from err
            finally:
                conn.close()
            # keyed by the source's qualified names, in the order of the list given
            qualified = dict(zip(settings.tables, sizes, strict=True))
            return Weights(dict(zip(settings.tables, map(float, sizes.values()), strict=True)),
                           SOURCE_SIZES,
                           frozenset(t for t, name in qualified.items() if name in sliceable))
    if settings.table_weights:
        return Weights({t: float(settings.table_weights.get(t, 1)) for t in settings.tables},
                       "configured table_weights")
    return Weights({t: 1.0 for t in settings.tables}, "equal weights")


def check_rules_on_source(conn, rules: RulesFile, listed: set[str]) -> None:
    """The rules as the copier checks them before a night writes anything (every table and
    column they name, every expression, tried on no rows in a read-only transaction), and each
    table they name one of those listed, as the source resolves both names (RulesError or
    SettingsError, one line)."""
    import copier

    # The salt is setup's to check: the SecureString <prefix>hash_salt, COPIER_HASH_SALT or a prompt.
    masks = copier.check_rules(conn, rules.tables, rules.origin, None, salt_checked_elsewhere=True)
    for table, masking in masks.items():
        if table.qualified not in listed:
            raise SettingsError(f'{rules.origin}: [tables."{masking.rules.written}"] is '
                                f"{table.qualified} on the source, which is not one of tables: its "
                                "rules would apply to nothing: add the table to tables, or remove "
                                "its rules")


def sliced_tables(assignment: list[list[str]]) -> dict[str, int]:
    """The tables an assignment splits, with their number of slices."""
    return {table: piece[1] for job in assignment for table, piece in map(runlog.split_unit, job)
            if piece}


def tables_of(assignment: list[list[str]]) -> list[str]:
    """Each table an assignment names once, slices or not."""
    return list(dict.fromkeys(runlog.split_unit(unit)[0] for job in assignment for unit in job))


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
    return [runlog.unit_texts(value) for value in values]


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


def plan_jobs(settings: Settings, out: Callable[[str], None], aws: Aws | None = None,
              rules: RulesFile | None = None,
              warn: Callable[[str], None] = warn_on_stderr) -> list[list[str]]:
    """Split the tables over the jobs by weight, cutting the sliceable tables heavier than an
    average job into slices (only with one_snapshot: the slices of a table must come from one
    snapshot), or keep the deployed split when it covers the same tables with the same
    number of jobs: `operations.py rebalance --apply` sets it from measured times, and a plain
    setup must not silently undo that."""
    found = table_weights(settings, out, rules)  # also checks the list on a reachable source
    if rules and found.basis != SOURCE_SIZES:
        warn(f"{rules.origin}: only its form was checked, not against the source (setup "
             f"reaches it with [source] and {secret_env_var('source', 'password')}): the first "
             "night's copier checks its tables, columns and expressions there, and refuses the "
             "whole run if one is wrong")
    sliceable = found.sliceable if settings.splits_tables else frozenset()
    if found.sliceable and not settings.splits_tables:
        why = "split = false" if settings.one_snapshot else (
            "one_snapshot = false: the slices of a table must come from one snapshot")
        out(f"no table is split into slices ({why})")
    jobs = settings.jobs if sliceable else min(settings.jobs, len(settings.tables))
    if jobs < settings.jobs:
        out(f"only {len(settings.tables)} tables: using {jobs} jobs instead of {settings.jobs}")
    deployed = deployed_assignment(aws, Names(settings.prefix)) if aws else None
    if deployed and len(deployed) == jobs and sorted(tables_of(deployed)) == sorted(
            settings.tables) and (settings.splits_tables or not sliced_tables(deployed)):
        out("table assignment kept from the deployed state machine (same tables and jobs; "
            "operations.py rebalance changes it):")
        for number, units in enumerate(deployed, start=1):
            out(f"  {job_name(number)}  {','.join(units)}")
        return deployed
    threshold = None
    if settings.split_larger_than_mb and found.basis == SOURCE_SIZES:
        threshold = settings.split_larger_than_mb * 1e6
    assignment = [units for units in runlog.plan_units(found.weights, jobs, sliceable, threshold)
                  if units]
    sliced = sliced_tables(assignment)
    out(f"table assignment ({found.basis}"
        + (f"; split into slices: {', '.join(f'{t} ({n})' for t, n in sliced.items())}"
           if sliced else "") + "):")
    for number, units in enumerate(assignment, start=1):
        load = sum(runlog.unit_weight(unit, found.weights) for unit in units)
        out(f"  {job_name(number)}  weight {load:g}  {','.join(units)}")
    return assignment
