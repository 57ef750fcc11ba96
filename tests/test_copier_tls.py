"""TLS that verifies the server: a cluster with SSL on and a CA made here with openssl.

sslmode verify-full with the right CA copies; the wrong CA, or a host name the certificate does
not name, is one line on stderr and exit 1, with nothing copied."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from dev.localpg import LocalCluster

REPO = Path(__file__).resolve().parent.parent
HOST = "db.example.test"  # the name in the server's certificate; it resolves nowhere


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> Path:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=directory)
    return directory / f"{name}.crt"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A cluster with ssl=on and a certificate for HOST signed by a CA of our own."""
    keys = tmp_path_factory.mktemp("tls")
    right_ca, wrong_ca = make_ca(keys, "right-ca"), make_ca(keys, "wrong-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={HOST}",
            "-keyout", "server.key", "-out", "server.csr", cwd=keys)
    (keys / "san.ext").write_text(f"subjectAltName=DNS:{HOST}\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "right-ca.crt", "-CAkey", "right-ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=keys)

    cluster = LocalCluster.create(tmp_path_factory.mktemp("pg-tls") / "data")
    for name in ("server.crt", "server.key"):
        target = cluster.datadir / name
        target.write_bytes((keys / name).read_bytes())
        target.chmod(0o600)
        cluster._give_to_server_user(target)
    with open(cluster.datadir / "postgresql.auto.conf", "a") as conf:
        conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
    cluster.start()
    admin = psycopg2.connect(cluster.dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("CREATE DATABASE src")
        cur.execute("CREATE DATABASE tgt")
    admin.close()
    source = psycopg2.connect(cluster.dsn("src"))
    with source, source.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 50)")
    source.close()
    yield cluster, right_ca, wrong_ca
    cluster.stop()


def run_copier(cluster: LocalCluster, *, host: str, ca: Path) -> subprocess.CompletedProcess:
    """The copier as a process, both databases through verify-full with `ca`."""
    def dsn(db: str) -> str:
        return (f"host={host} hostaddr=127.0.0.1 port={cluster.port} dbname={db} user=postgres "
                f"sslmode=verify-full sslrootcert={ca}")
    env = {**os.environ, "SOURCE_DSN": dsn("src"), "TARGET_DSN": dsn("tgt"),
           "PGSSLCERT": "/nonexistent", "PGSSLKEY": "/nonexistent"}
    return subprocess.run([sys.executable, str(REPO / "copier.py"), "TABLES=t"], env=env,
                          capture_output=True, text=True, cwd=REPO, timeout=600)


def target_has_t(cluster: LocalCluster) -> bool:
    conn = psycopg2.connect(cluster.dsn("tgt"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('public.t') IS NOT NULL")
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_verify_full_with_the_right_ca_copies_over_tls(tls):
    cluster, right_ca, _ = tls
    done = run_copier(cluster, host=HOST, ca=right_ca)
    assert done.returncode == 0, done.stderr
    conn = psycopg2.connect(f"host={HOST} hostaddr=127.0.0.1 port={cluster.port} dbname=tgt "
                            f"user=postgres sslmode=verify-full sslrootcert={right_ca}")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM t")
            assert cur.fetchone() == (50,)
            cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cur.fetchone() == (True,)
    finally:
        conn.close()


@pytest.mark.parametrize("case", ["wrong CA", "wrong host name"])
def test_verify_full_refuses_a_server_it_cannot_verify_in_one_line(tls, case):
    cluster, right_ca, wrong_ca = tls
    with psycopg2.connect(cluster.dsn("tgt")) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS t")
    conn.close()
    if case == "wrong CA":
        done = run_copier(cluster, host=HOST, ca=wrong_ca)
        reason = "certificate verify failed"
    else:  # the certificate names HOST; the copier was told 127.0.0.1
        done = run_copier(cluster, host="127.0.0.1", ca=right_ca)
        reason = 'does not match host name "127.0.0.1"'
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("copier: error: cannot connect to the source database: ")
    assert reason in lines[0] and (case == "wrong CA" or f'"{HOST}"' in lines[0]), lines[0]
    assert not target_has_t(cluster)


@pytest.mark.parametrize("which", ["right", "wrong"])
def test_sslrootcert_comes_from_parameter_store(tls, which, monkeypatch):
    """On AWS the settings are <prefix><db>/sslmode and <prefix><db>/sslrootcert (verify-ca
    here: Parameter Store has no hostaddr to reach a made-up host name)."""
    import boto3
    from moto import mock_aws

    import copier

    cluster, right_ca, wrong_ca = tls
    ca = right_ca if which == "right" else wrong_ca
    for name in ("SOURCE_DSN", "TARGET_DSN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COPIER_SSM_PREFIX", "/tls/")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        ssm = boto3.client("ssm")
        for db, dbname in (("source", "src"), ("target", "tgt")):
            for setting, value in {"host": "127.0.0.1", "port": str(cluster.port), "dbname": dbname,
                                   "user": "postgres", "password": "x", "sslmode": "verify-ca",
                                   "sslrootcert": str(ca)}.items():
                ssm.put_parameter(Name=f"/tls/{db}/{setting}", Value=value, Type="String")
        settings = copier.load_connection_settings()
        assert settings["source"]["sslrootcert"] == str(ca)
        if which == "right":
            conn = copier.connect(settings["source"], "source")
            conn.close()
        else:
            with pytest.raises(psycopg2.OperationalError, match="certificate verify failed"):
                copier.connect(settings["source"], "source")
