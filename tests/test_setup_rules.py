"""Column and row rules on AWS: setup_aws.py writes rules_file to Parameter Store (<prefix>rules)
and the salt of its hashes as a SecureString (<prefix>hash_salt), checked first (their form,
and against a reachable source); the copier, given no DSN, reads both with its other settings
and applies them. Under moto, with real databases where a source is needed."""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
from pathlib import Path

import boto3
import pytest
from aws_helpers import REGION, ROOM_NOT_CHECKED, inventory, outcomes, write_config

import deploy
import rules
import setup_aws
import teardown_aws

ACCOUNT = "123456789012"  # moto's default account
RULES = "/nightly-copy/rules"
SALT_PARAMETER = "/nightly-copy/hash_salt"
SALT = "pepper-on-aws-41c9"
HASHING = """[tables."public.a"]
columns = { email = "hash", phone = "null" }
"""
MASKING = """[tables."public.a"]
columns = { phone = "null" }
"""
ONLY_FORM = "only its form was checked, not against the source"


def run(main, argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def deployed_with(aws, tmp_path, monkeypatch, capsys):
    """deployed_with(rules text or None, *flags): setup with a rules_file holding that text
    (deploy.toml's relative path: its folder's rules.toml), or without one; its exit code,
    outcomes and stderr. Its stdout never holds the salt."""
    monkeypatch.setenv(rules.SALT_VARIABLE, SALT)

    def deploy_with(text: str | None, *flags: str) -> tuple[int, dict[str, str], str]:
        if text is None:
            config = write_config(tmp_path / "deploy.toml")
        else:
            (tmp_path / "rules.toml").write_text(text)
            config = write_config(tmp_path / "deploy.toml", rules_file="rules.toml")
        code, out, err = run(setup_aws.main, ["--config", str(config), *flags], capsys)
        assert SALT not in out + err
        return code, outcomes(out), err

    return deploy_with


def stored(name: str) -> dict:
    ssm = boto3.client("ssm")
    parameter = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
    (described,) = ssm.describe_parameters(ParameterFilters=[
        {"Key": "Name", "Option": "Equals", "Values": [name]}])["Parameters"]
    tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name)["TagList"]
    return {"type": parameter["Type"], "value": parameter["Value"], "tier": described["Tier"],
            "tags": {t["Key"]: t["Value"] for t in tags}}


def test_setup_writes_the_rules_and_the_salt_then_changes_nothing(deployed_with, monkeypatch,
                                                                 tmp_path):
    code, first, err = deployed_with(HASHING)
    assert code == 0
    assert first[f"SSM parameter {RULES}"] == first[f"SSM parameter {SALT_PARAMETER}"] == "created"
    assert stored(RULES) == {"type": "String", "value": HASHING, "tier": "Standard",
                             "tags": {"project": "nightly-copy"}}
    assert stored(SALT_PARAMETER)["type"] == "SecureString"
    assert stored(SALT_PARAMETER)["value"] == SALT
    # write_config's source is not reachable: said once, at the end, on stderr
    assert err == ROOM_NOT_CHECKED + (
        f"warning: rules_file {tmp_path / 'rules.toml'}: {ONLY_FORM} (setup reaches it with [source] "
        "and COPIER_SOURCE_PASSWORD): the first night's copier checks its tables, columns "
        "and expressions there, and refuses the whole run if one is wrong\n")

    monkeypatch.delenv(rules.SALT_VARIABLE)  # a stored salt is not asked for again
    code, second, _ = deployed_with(HASHING)
    assert code == 0 and second == dict.fromkeys(first, "unchanged")
    code, _, _ = deployed_with(HASHING, "--dry-run")
    assert code == 0  # nothing would change


def test_a_changed_rule_updates_only_the_rules(deployed_with):
    deployed_with(HASHING)
    code, changed, _ = deployed_with(HASHING.replace('"null"', '"drop"'))
    assert code == 0
    assert {label: status for label, status in changed.items() if status != "unchanged"} == {
        f"SSM parameter {RULES}": "updated"}
    assert stored(RULES)["value"] == HASHING.replace('"null"', '"drop"')


def padded(text: str, size: int) -> str:
    """The rules with a comment that brings them to `size` bytes."""
    return text + "# " + "x" * (size - len(text) - 3) + "\n"


def test_rules_over_4_kb_take_the_advanced_tier_and_keep_it(deployed_with, capsys):
    deployed_with(padded(MASKING, 4096))
    assert stored(RULES)["tier"] == "Standard"  # 4 KB: the most a standard parameter holds

    code, changed, _ = deployed_with(padded(MASKING, 4097))
    assert code == 0 and changed[f"SSM parameter {RULES}"] == "updated"
    assert stored(RULES)["tier"] == "Advanced"

    # smaller again: Parameter Store cannot make an advanced parameter standard, and deleting
    # it would leave a moment without rules; it stays advanced
    code, _, _ = deployed_with(MASKING)
    assert code == 0
    assert stored(RULES) == {"type": "String", "value": MASKING, "tier": "Advanced",
                             "tags": {"project": "nightly-copy"}}
    code, again, _ = deployed_with(MASKING)
    assert again[f"SSM parameter {RULES}"] == "unchanged"


def test_without_rules_file_the_rules_go_and_the_salt_stays_until_teardown_removes_secrets(
        deployed_with, tmp_path, capsys):
    deployed_with(HASHING)
    code, removed, _ = deployed_with(None)
    assert code == 0
    assert removed[f"SSM parameter {RULES}"] == "removed"
    # the salt is a secret: kept, so that hashes are the same if a rule hashes again
    assert removed[f"SSM parameter {SALT_PARAMETER}"] == "kept"
    assert stored(SALT_PARAMETER)["value"] == SALT
    assert RULES not in inventory("nightly-copy")["parameters"]

    code, again, _ = deployed_with(None)
    assert code == 0 and f"SSM parameter {RULES}" not in again  # gone: nothing to say
    assert "removed" not in again.values()
    assert deployed_with(None, "--dry-run")[0] == 0  # nothing would change

    config = str(tmp_path / "deploy.toml")
    code, out, _ = run(teardown_aws.main, ["--config", config], capsys)
    assert outcomes(out)[f"SSM parameter {SALT_PARAMETER}"] == "kept"
    code, out, _ = run(teardown_aws.main, ["--config", config, "--remove-secrets"], capsys)
    assert outcomes(out)[f"SSM parameter {SALT_PARAMETER}"] == "removed"
    assert inventory("nightly-copy")["parameters"] == []


def test_teardown_removes_the_rules(deployed_with, tmp_path, capsys):
    deployed_with(MASKING)
    code, out, _ = run(teardown_aws.main, ["--config", str(tmp_path / "deploy.toml")], capsys)
    assert code == 0 and outcomes(out)[f"SSM parameter {RULES}"] == "removed"
    assert f"SSM parameter {SALT_PARAMETER}" not in outcomes(out)  # none was written


def test_rules_that_do_not_hash_need_no_salt(deployed_with, monkeypatch):
    monkeypatch.delenv(rules.SALT_VARIABLE)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # nobody to ask either
    code, done, _ = deployed_with(MASKING)
    assert code == 0 and done[f"SSM parameter {RULES}"] == "created"
    assert SALT_PARAMETER not in inventory("nightly-copy")["parameters"]


def test_a_hash_without_a_salt_is_refused_before_anything_is_created(deployed_with,
                                                                     monkeypatch):
    monkeypatch.delenv(rules.SALT_VARIABLE)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal: no prompt
    code, _, err = deployed_with(HASHING)
    assert code == 1 and err == (f"error: {SALT_PARAMETER}: set COPIER_HASH_SALT or run setup on "
                                 "a terminal to type it\n")
    assert all(names == [] for names in inventory("nightly-copy").values())


def ssm_readable(document: dict) -> list[str]:
    return [resource for statement in document["Statement"]
            if "ssm:GetParametersByPath" in statement["Action"] for resource in statement["Resource"]]


def test_the_job_roles_may_read_the_rules_and_the_salt(deployed_with, tmp_path):
    """The copier reads its whole path: both parameters are in it, for CodeBuild's role (as
    deployed) and Batch's job role (as setup would write it). The salt is a SecureString under
    the AWS managed key, as the passwords: no KMS grant in the roles' policies."""
    deployed_with(HASHING)
    codebuild = boto3.client("iam").get_role_policy(RoleName="nightly-copy-codebuild",
                                                    PolicyName="permissions")["PolicyDocument"]
    settings = deploy.load_settings(argparse.Namespace(config=write_config(
        tmp_path / "batch.toml", runner="batch", vpc_id="vpc-1", subnets=["subnet-1"],
        security_groups=["sg-1"])))
    batch_job = deploy.batch.job_permissions(deploy.Deployment(settings, deploy.Aws(REGION),
                                                               deploy.Options()))
    for role, document in (("codebuild", codebuild), ("batch-job", batch_job)):
        for name in (RULES, SALT_PARAMETER):
            arn = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{name}"
            assert any(fnmatch.fnmatchcase(arn, pattern) for pattern in ssm_readable(document)), (
                role, name)
    for name in ("/nightly-copy/source/password", SALT_PARAMETER):
        (described,) = boto3.client("ssm").describe_parameters(ParameterFilters=[
            {"Key": "Name", "Option": "Equals", "Values": [name]}])["Parameters"]
        assert described["Type"] == "SecureString"
        assert described.get("KeyId", "alias/aws/ssm") == "alias/aws/ssm"


def test_a_rules_file_given_by_flag_is_read_from_the_current_directory(aws, tmp_path,
                                                                       monkeypatch, capsys):
    monkeypatch.setenv(rules.SALT_VARIABLE, SALT)
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "masking.toml").write_text(MASKING)
    (tmp_path / "conf").mkdir()
    config = write_config(tmp_path / "conf" / "deploy.toml")
    monkeypatch.chdir(tmp_path / "here")
    code, _, err = run(setup_aws.main, ["--config", str(config), "--rules-file", "masking.toml"],
                       capsys)
    assert code == 0, err
    assert stored(RULES)["value"] == MASKING


# --- against a source setup reaches: the copier's own check, before anything is created


def config_on(dbs, directory: Path, tables: list[str], rules_text: str) -> Path:
    """A deployment of the test's databases (a trust cluster: the passwords are not asked),
    whose rules_file holds rules_text."""
    (directory / "rules.toml").write_text(rules_text)
    lines = [f"region = {json.dumps(REGION)}", f"tables = {json.dumps(tables)}", "jobs = 2",
             'github_url = "https://github.com/example/nightly-copy.git"',
             'rules_file = "rules.toml"']
    for database, dsn in (("source", dbs.source_dsn), ("target", dbs.target_dsn)):
        lines.append(f"[{database}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in
                  (item.split("=", 1) for item in dsn.split())]
        lines.append('sslmode = "disable"')
    path = directory / "deploy.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


SHOP = """
    CREATE TABLE customers (id int PRIMARY KEY, name text, email text UNIQUE, phone text);
    INSERT INTO customers VALUES (1, 'Alice', 'alice@example.com', '+49 30 1234567'),
                                 (2, 'Bob', 'bob@example.com', NULL);
    INSERT INTO customers SELECT g, 'c' || g, 'c' || g || '@example.org', '+1 555 ' || g
        FROM generate_series(3, 300) g;
    CREATE TABLE orders (id int PRIMARY KEY, customer_email text, total numeric);
    INSERT INTO orders SELECT g, CASE WHEN g % 2 = 0 THEN 'alice@example.com'
        ELSE 'c' || (g % 298 + 3) || '@example.org' END, g FROM generate_series(1, 400) g;
    CREATE TABLE "Orders" (id int);
"""
SHOP_RULES = """[tables."public.customers"]
strict = true
columns = { id = "keep", name = "keep", email = "hash", phone = "null" }

[tables.orders]
columns = { customer_email = "hash" }
"""


def test_rules_checked_against_a_reachable_source_pass_without_a_warning(aws, dbs, tmp_path,
                                                                         monkeypatch, capsys):
    dbs.source(SHOP)
    monkeypatch.setenv(rules.SALT_VARIABLE, SALT)
    config = config_on(dbs, tmp_path, ["customers", "public.orders"], SHOP_RULES)
    code, out, err = run(setup_aws.main, ["--config", str(config)], capsys)
    assert code == 0, err
    assert "table assignment (source table sizes" in out and ONLY_FORM not in err
    assert stored(RULES)["value"] == SHOP_RULES


# Each refused by the source's answer, where the rules' form is fine (with an unquoted Orders
# in tables, "Orders" is that table on the source and orders another: no name check without
# the source could tell).
REFUSED_BY_THE_SOURCE = [
    ('[tables.customers]\ncolumns = { emial = "hash" }\n', ["customers"],
     """[tables."customers"]: no column 'emial' in this table on the source"""),
    ('[tables.customers]\nstrict = true\ncolumns = { id = "keep", email = "hash" }\n',
     ["customers"], None),  # strict: a column left out refuses the table at night, not here
    ('[tables.customers]\ncolumns = { phone = { sql = "left(phone, 3) + 1" } }\n', ["customers"],
     """[tables."customers"]: column 'phone': the source refuses it: operator does not exist"""),
    ('[tables.customers]\nwhere = "created_at > now()"\n', ["customers"],
     """[tables."customers"]: where: the source refuses it: column "created_at" does not exist"""),
    ('[tables.orders]\ncolumns = { customer_email = "hash" }\n', ["Orders"],
     """[tables."orders"] is public.orders on the source, which is not one of tables"""),
]


@pytest.mark.parametrize("text, tables, message", REFUSED_BY_THE_SOURCE,
                         ids=["column", "strict", "expression", "where", "another-table"])
def test_rules_the_source_refuses_are_one_line_before_anything_is_created(
        aws, dbs, tmp_path, monkeypatch, capsys, text, tables, message):
    dbs.source(SHOP)
    monkeypatch.setenv(rules.SALT_VARIABLE, SALT)
    config = config_on(dbs, tmp_path, tables, text)
    code, _, err = run(setup_aws.main, ["--config", str(config), "--dry-run"], capsys)
    if message is None:  # what the copier refuses per table at night passes here
        assert code == 2, err
        return
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: rules_file {tmp_path / 'rules.toml'}: ") and message in err
    code, _, err = run(setup_aws.main, ["--config", str(config)], capsys)
    assert code == 1 and message in err
    assert all(names == [] for names in inventory("nightly-copy").values())


# --- end to end: what setup wrote is what the copier applies on AWS


def test_the_copier_applies_the_rules_and_the_salt_setup_wrote(aws, copier_env, run_copier,
                                                               tmp_path, monkeypatch, capfd):
    copier_env.source(SHOP)
    monkeypatch.setenv(rules.SALT_VARIABLE, SALT)
    config = config_on(copier_env, tmp_path, ["public.customers", "public.orders"], SHOP_RULES)
    assert setup_aws.main(["--config", str(config)]) == 0, capfd.readouterr().err

    # A job as setup deploys it: no DSN, no local rules or salt; everything from Parameter Store
    for name in ("SOURCE_DSN", "TARGET_DSN", rules.SALT_VARIABLE, rules.RULES_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COPIER_SSM_PREFIX", "/nightly-copy/")
    result = run_copier("TABLES=public.customers,public.orders")
    assert result.code == 0, result.stderr

    # the hash is the one the salt from the SecureString gives; phone is emptied
    assert copier_env.target_rows("SELECT email, phone FROM customers WHERE id = 1") == \
        copier_env.source_rows("SELECT encode(sha256(convert_to(%s || email, 'UTF8')), 'hex'), "
                               "NULL FROM customers WHERE id = 1", (SALT,))
    assert copier_env.target_rows("SELECT count(*) FROM customers WHERE phone IS NOT NULL") == [(0,)]
    # hashed keys still join: every order finds its customer
    assert copier_env.target_rows("SELECT count(*) FROM orders JOIN customers "
                                  "ON customers.email = orders.customer_email") == [(400,)]
    everything = str(copier_env.target_rows("SELECT * FROM customers")) + str(
        copier_env.target_rows("SELECT * FROM orders")) + result.stderr + str(result.events)
    for raw in ("alice@example.com", "+49 30 1234567", SALT):
        assert raw not in everything
