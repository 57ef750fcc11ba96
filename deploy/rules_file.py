"""The rules_file setting: the column and row rules (rules.py, docs/copier.md) setup writes to
Parameter Store, checked for their form before anything is created and, when setup reaches the
source, against it (deploy/plan.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import rules
import runlog
from deploy.settings import Settings, SettingsError

# PutParameter, Tier (the API reference, also botocore's ssm model): "Standard parameters have a
# content size limit of 4 KB ... Advanced parameters have a content size limit of 8 KB ... Advanced
# parameters incur a charge"; "you can't revert an advanced parameter to a standard parameter"
# (only delete and recreate it). Parameter Store's own refusal counts 4096 characters; the
# bytes of the UTF-8 text are counted here, never fewer.
STANDARD_TIER, ADVANCED_TIER = "Standard", "Advanced"
STANDARD_TIER_BYTES, ADVANCED_TIER_BYTES = 4096, 8192
# PutParameter, Value: "You can't include values wrapped in double brackets {{}} or
# {{ssm:parameter-name}} in a parameter value."
DOUBLE_BRACKETS = re.compile(r"\{\{.*?\}\}", re.S)


@dataclass(frozen=True)
class RulesFile:
    """The rules document as setup writes it (its text) and as the copier reads it (its tables)."""

    path: str
    text: str
    tables: list[rules.TableRules]

    @property
    def origin(self) -> str:
        """What the one-line errors name."""
        return f"rules_file {self.path}"

    @property
    def size(self) -> int:
        return len(self.text.encode("utf-8"))

    @property
    def tier(self) -> str:
        """The Parameter Store tier its size needs."""
        return STANDARD_TIER if self.size <= STANDARD_TIER_BYTES else ADVANCED_TIER

    @property
    def needs_salt(self) -> bool:
        return any(table.needs_salt for table in self.tables)


def read_rules_file(settings: Settings) -> RulesFile | None:
    """The rules_file setting read and checked for what needs no database: its form (the
    copier's own reader), a size Parameter Store takes, and every table it names being one of
    `tables` (a rule for a table not copied applies to nothing: most likely a misspelt name,
    whose table would then be copied unmasked). SettingsError or RulesError, one line."""
    if not settings.rules_file:
        return None
    origin = f"rules_file {settings.rules_file}"
    try:
        text = Path(settings.rules_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise SettingsError(f"{origin}: cannot read it: {reason}") from None
    document = rules.read_rules(text, origin)
    if not document:
        raise SettingsError(f"{origin}: no rules in it ([tables.\"schema.table\"]): write some, "
                            "or leave rules_file out")
    found = RulesFile(settings.rules_file, text, document)
    if found.size > ADVANCED_TIER_BYTES:
        raise SettingsError(f"{origin}: {found.size} bytes, more than the {ADVANCED_TIER_BYTES} a "
                            "Parameter Store parameter holds (Advanced tier): shorten it")
    if DOUBLE_BRACKETS.search(text):
        raise SettingsError(f"{origin}: Parameter Store refuses a value with '{{{{...}}}}' in it "
                            "(its parameter references): write the braces apart, '{ {' and '} }'")
    listed = {key for table in settings.tables for key in name_keys(runlog.split_table_list(table)[0])}
    for table in document:
        if not name_keys(table.parts) & listed:
            raise SettingsError(f'{origin}: [tables."{table.written}"] is not one of tables: its '
                                "rules would apply to nothing (a misspelt name leaves the table it "
                                "meant unmasked): add the table to tables, or remove its rules")
    return found


def name_keys(parts: runlog.Parts) -> set[tuple[str, str]]:
    """The source tables a name may be, as the copier resolves it without the source at hand:
    an unqualified name is public's; the name as written, and folded to lower case where it is
    not quoted (copier.find_table tries the exact name, then the folded one)."""
    if len(parts) == 1:
        parts = [("public", False), *parts]
    (schema, schema_quoted), (name, name_quoted) = parts
    return {(schema, name), (schema if schema_quoted else schema.lower(),
                             name if name_quoted else name.lower())}
