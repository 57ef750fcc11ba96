"""Column and row rules: what of a table reaches the reporting database.

A TOML document, read by copier.py (COPIER_RULES, a path, for a local run; the parameter
<prefix>rules on AWS, which setup_aws.py writes from its rules_file setting):

    [tables."public.customers"]
    strict = true        # every column must be named below; a new one refuses the table
    columns = { id = "keep", email = "hash", phone = "null", notes = "drop",
                birthday = { sql = "date_trunc('year', birthday)::date" } }

    [tables."public.events"]
    where = "created_at > now() - interval '400 days'"

keep copies a column; null keeps it and empties it; drop leaves it out of the reporting table;
hash replaces each value by a salted, deterministic hash (the same value gives the same hash in
every table and every night: joins on a hashed key still work); {sql = ...} is an expression
over the row; where copies only the rows it selects. The source computes all of it, inside the
run's snapshot: a raw value of a masked column never leaves it.

This module reads and checks the document's form (standard library only: setup_aws.py checks
it before it creates anything); copier.py checks it against the source (tables, columns,
expressions) and applies it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from runlog import CopierError, Parts, TableListError, split_table_list

ACTIONS = ("keep", "null", "drop", "hash")  # and {sql = "..."}
TABLE_KEYS = ("strict", "columns", "where")
SALT_VARIABLE = "COPIER_HASH_SALT"  # the hash's salt for a local run; <prefix>hash_salt on AWS
RULES_VARIABLE = "COPIER_RULES"  # the rules' path for a local run; <prefix>rules on AWS


class RulesError(CopierError):
    """The rules document is malformed, or names what the source does not have."""


@dataclass(frozen=True)
class ColumnRule:
    action: str  # keep, null, drop, hash or sql
    sql: str | None = None  # the expression of an sql rule

    @property
    def written(self) -> str:
        """As the document writes it."""
        return f'{{ sql = "{self.sql}" }}' if self.action == "sql" else f'"{self.action}"'


KEEP = ColumnRule("keep")


@dataclass(frozen=True)
class TableRules:
    written: str  # the table as the document names it
    parts: Parts  # ...parsed as TABLES names are
    strict: bool
    columns: dict[str, ColumnRule]
    where: str | None

    def of(self, column: str) -> ColumnRule | None:
        """A column's rule; None for one a strict table does not name (it refuses the table)."""
        return self.columns.get(column, None if self.strict else KEEP)

    @property
    def masks(self) -> bool:
        """Whether anything of the table is left out or changed (an error could then quote a
        value the rules mask)."""
        return self.where is not None or any(rule.action != "keep" for rule in self.columns.values())

    @property
    def needs_salt(self) -> bool:
        return any(rule.action == "hash" for rule in self.columns.values())


def read_rules(text: str, origin: str) -> list[TableRules]:
    """The document's tables, each checked for its form; RulesError, in one line that names
    origin (a path, a parameter), for the first thing wrong."""
    try:
        document = tomllib.loads(inline_tables_on_one_line(text))
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{origin}: not TOML: {exc}") from None
    unknown = sorted(set(document) - {"tables"})
    if unknown:
        raise RulesError(f"{origin}: unknown key {unknown[0]!r}: rules go under [tables.\"schema.table\"]")
    tables = document.get("tables", {})
    if not isinstance(tables, dict):
        raise RulesError(f"{origin}: tables must be a table of tables ([tables.\"schema.table\"])")
    return [table_rules(origin, name, body) for name, body in tables.items()]


def inline_tables_on_one_line(text: str) -> str:
    """TOML 1.1 lets an inline table span lines (columns = { a = "keep",<newline> b = "drop" }),
    as the rules are best written; Python's tomllib reads TOML 1.0, where it may not: such a
    table's newlines become spaces, its comments and a comma before its closing brace go."""
    out, depth, i, quote = [], 0, 0, None
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote[0] == '"':
                out.append(text[i:i + 2])
                i += 2
                continue
            if text.startswith(quote, i):
                out.append(quote)
                i += len(quote)
                quote = None
                continue
        elif text.startswith(('"""', "'''"), i) or ch in "\"'":
            quote = text[i:i + 3] if text.startswith(('"""', "'''"), i) else ch
            out.append(quote)
            i += len(quote)
            continue
        elif ch == "{":
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            while out and out[-1].isspace():
                out.pop()
            if out and out[-1] == ",":
                out.pop()
        elif depth and ch == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif depth and ch == "\n":
            ch = " "
        out.append(ch)
        i += 1
    return "".join(out)


def table_rules(origin: str, name: str, body: object) -> TableRules:
    where = f'{origin}: [tables."{name}"]'
    try:
        (parts,) = split_table_list(name)
    except (TableListError, ValueError):
        raise RulesError(f"{where}: not one table name (schema.table)") from None
    if not isinstance(body, dict):
        raise RulesError(f"{where}: must be a table of strict, columns and where")
    unknown = sorted(set(body) - set(TABLE_KEYS))
    if unknown:
        raise RulesError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(TABLE_KEYS)})")
    strict = body.get("strict", False)
    if not isinstance(strict, bool):
        raise RulesError(f"{where}: strict must be true or false")
    columns = body.get("columns", {})
    if not isinstance(columns, dict):
        raise RulesError(f"{where}: columns must be a table: {{ name = \"keep\", ... }}")
    row_filter = body.get("where")
    if row_filter is not None:
        if not isinstance(row_filter, str) or not row_filter.strip():
            raise RulesError(f"{where}: where must be an SQL condition, as a string")
        check_expression(row_filter, f"{where} where")
    return TableRules(name, parts, strict, {column: column_rule(where, column, rule)
                                            for column, rule in columns.items()}, row_filter)


def column_rule(where: str, column: str, rule: object) -> ColumnRule:
    if isinstance(rule, str):
        if rule not in ACTIONS:
            raise RulesError(f"{where}: column {column!r}: unknown action {rule!r} "
                             f"(one of {', '.join(ACTIONS)}, or {{ sql = \"...\" }})")
        return ColumnRule(rule)
    expression = rule.get("sql") if isinstance(rule, dict) and set(rule) == {"sql"} else None
    if isinstance(expression, str) and expression.strip():
        check_expression(expression, f"{where} column {column!r}")
        return ColumnRule("sql", expression)
    raise RulesError(f"{where}: column {column!r}: a rule is one of {', '.join(ACTIONS)}, "
                     f"or {{ sql = \"an expression\" }}")


def check_expression(text: str, where: str) -> None:
    """An expression or condition is one piece of SQL the copier puts inside its own statement:
    its parentheses balance, and no ';' or comment outside a quoted string or name could end
    that statement or hide the rest of it. The source checks the rest (copier.py)."""
    depth, i, quote = 0, 0, None
    while i < len(text):
        ch = text[i]
        if quote:
            if text.startswith(quote, i):
                i += len(quote) - 1
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "$":
            end = text.find("$", i + 1)
            tag = text[i:end + 1] if end > i else ""
            if tag and (tag == "$$" or tag[1:-1].replace("_", "a").isalnum()):
                quote, i = tag, end
        elif ch == ";" or text.startswith(("--", "/*"), i):
            raise RulesError(f"{where}: one SQL expression, without ';' or comments: {text!r}")
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                break
        i += 1
    if quote or depth != 0:
        raise RulesError(f"{where}: unbalanced {'quote' if quote else 'parentheses'}: {text!r}")
