"""A throwaway local PostgreSQL cluster for the tests, the demo and the benchmark.

initdb and postgres refuse to run as root, so when we are root the cluster belongs to an
unprivileged OS user (``postgres`` if it exists, else one we create). The server listens on
127.0.0.1 on a free port with trust authentication: it is never reachable from outside.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SERVER_USER_CANDIDATES = ("postgres", "pgtest")
SUPERUSER = "postgres"

# Durability is worthless for a throwaway cluster; speed is not.
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "256MB",
    "max_wal_size": "4GB",
}


class LocalPgError(RuntimeError):
    pass


def server_bindir() -> Path:
    """Directory of initdb/pg_ctl/postgres: Debian's versioned folder first, then PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    raise LocalPgError(
        "no PostgreSQL server binaries (initdb) found: run dev/install.sh "
        "or apt-get install postgresql"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def system_tool(name: str) -> str:
    """A root's tool (useradd, runuser), found where Debian puts it (/usr/sbin) also when PATH
    leaves the sbin folders out (env -i PATH=/usr/bin:/bin, as a fresh shell may)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") or name


def server_os_user() -> str | None:
    """The OS user to run the server as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USER_CANDIDATES:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    name = SERVER_USER_CANDIDATES[-1]
    made = subprocess.run(
        [system_tool("useradd"), "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        pwd.getpwnam(name)  # made here, or by another test worker at the same moment
    except KeyError:
        raise LocalPgError(f"could not create the OS user {name}: {made.stderr.strip()}") from None
    return name


@dataclass
class LocalCluster:
    datadir: Path
    port: int
    os_user: str | None
    bindir: Path

    @classmethod
    def create(cls, datadir: Path, port: int | None = None, bindir: Path | None = None) -> LocalCluster:
        """A cluster of the newest installed server, or of the one in bindir (dev/pg_majors.py)."""
        datadir = Path(datadir).resolve()
        cluster = cls(datadir, port or free_port(), server_os_user(), bindir or server_bindir())
        if not (datadir / "PG_VERSION").exists():
            cluster._initdb()
        return cluster

    @classmethod
    def standby_of(cls, primary: LocalCluster, datadir: Path) -> LocalCluster:
        """A hot standby streaming from primary (pg_basebackup -R): a read replica to copy from.

        Server binaries without pg_basebackup (dev/pg_majors.py's npm ones) get a copy of the
        primary's files taken while it is stopped for a moment, set up as -R would."""
        standby = cls(Path(datadir).resolve(), free_port(), primary.os_user, primary.bindir)
        standby._make_datadir()
        if not (standby.bindir / "pg_basebackup").exists():
            standby._copy_stopped(primary)
            return standby
        backup = subprocess.run(
            standby._as_server_user([
                str(standby.bindir / "pg_basebackup"), "-D", str(standby.datadir),
                "-d", primary.dsn(), "-R", "-X", "stream", "--no-sync",
            ]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if backup.returncode != 0:
            raise LocalPgError(f"pg_basebackup failed: {backup.stderr.strip()}")
        return standby

    def _copy_stopped(self, primary: LocalCluster) -> None:
        running = primary.is_running()
        primary.stop()
        try:
            subprocess.run(self._as_server_user(["cp", "-a", f"{primary.datadir}/.", str(self.datadir)]),
                           check=True)
        finally:
            if running:
                primary.start()
        for leftover in ("server.log", "postmaster.opts"):
            (self.datadir / leftover).unlink(missing_ok=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        (self.datadir / "standby.signal").touch()
        self._give_to_server_user(self.datadir / "standby.signal")
        with open(self.datadir / "postgresql.auto.conf", "a") as conf:
            conf.write(f"primary_conninfo = '{primary.dsn()}'\n")

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if self.os_user is None:
            return argv
        return [system_tool("runuser"), "-u", self.os_user, "--", *argv]

    def _give_to_server_user(self, path: Path) -> None:
        if self.os_user is not None:
            pw = pwd.getpwnam(self.os_user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _make_datadir(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._give_to_server_user(self.datadir)
        # The server user must be able to reach the data directory and the binaries.
        for path in (self.datadir, self.bindir):
            for parent in path.parents:
                if parent == Path("/"):
                    break
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)

    def _initdb(self) -> None:
        self._make_datadir()
        subprocess.run(
            self._as_server_user([
                str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER,
                "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
            ]),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        with open(self.datadir / "postgresql.auto.conf", "a") as conf:
            for key, value in FAST_SETTINGS.items():
                conf.write(f"{key} = '{value}'\n")

    @property
    def socket_dir(self) -> Path:
        return self.datadir / "sockets"

    def start(self) -> None:
        self.socket_dir.mkdir(exist_ok=True)
        self._give_to_server_user(self.socket_dir)
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.socket_dir}"
        subprocess.run(
            self._as_server_user([
                str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-o", options,
                "-l", str(self.datadir / "server.log"), "-w", "-t", "60", "start",
            ]),
            check=True, stdout=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise LocalPgError(f"PostgreSQL did not start on port {self.port}; see {self.datadir}/server.log")

    def is_running(self) -> bool:
        result = subprocess.run(
            self._as_server_user([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        return result.returncode == 0

    def stop(self) -> None:
        subprocess.run(
            self._as_server_user([
                str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop",
            ]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def bin(self, name: str) -> str:
        return str(self.bindir / name)
