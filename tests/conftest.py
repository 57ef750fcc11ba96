"""Shared fixtures: one throwaway PostgreSQL cluster per test worker, fresh databases per test.

What a new test costs, and how to keep it cheap (the suite runs on 2 shared cores):

- The suite runs in three pytest-xdist workers (pyproject.toml), each with its own session
  fixtures: its own cluster, its own moto_server. Tests that share a costly fixture (ONE_WORKER
  below, the version tier's servers) run in one worker. -n 0 runs everything in one process.
- A database test asks for `dbs` (or `copier_env`, `run_copier`): a fresh source and target
  database in the worker's cluster, made from template0 ahead of the test and dropped after
  it, in a thread of their own (BackgroundDatabases). Never start a cluster for one test; a
  test that must stop a server uses clusters of its own (test_copier_outages.py) and never
  the worker's.
- A thread a test starts may use a database connection but never open one while other tests
  run: BackgroundDatabases says why.
- Test data: a few hundred rows prove what a few hundred thousand do; make more only when the
  test needs a copy that lasts (an outage mid-load), and say why where you make them.
- Timeouts, budgets and retries the copier takes as options (--lock-timeout, --lock-budget,
  --outage-budget, --progress-seconds) are given small values by the test, never timed
  assertions; a backoff can be monkeypatched (copier.backoff, deploy.aws.sleep). A race the
  test needs (a snapshot lost mid-table) is made by a hook in the copier's own process
  (tests/outage_hook.py, tests/holder_hook.py), not by reading its output in time: the
  workers keep both cores busy.
- AWS in process: `mock_aws` per test. Clients and setup walks are cheap here because every
  boto3 session shares one loader of the service models (the session fixture below).
  `moto_server` (a process, reset per test) only for what must run as a separate process: its
  scripts pay the imports each time.
- Work that mostly waits (the long outages: 90 s of real waiting) goes first in one worker
  while the others work (STARTED_FIRST; in one process it starts with the session and its
  tests run last). The 90 s outage ends about 105 s after the first test: the run cannot end
  sooner, and when the other workers end later, it is their CPU that sets its time.
- The run's temporary folder, the clusters' files with it, is in memory when there is room
  (in_memory_when_there_is_room): on disk the servers spend most of their CPU in the kernel.
"""

from __future__ import annotations

import compileall
import itertools
import os
import queue
import re
import shutil
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import moto_gaps
import psycopg2
import pytest
from aws_helpers import MOTO_CONFIG, MotoServer, set_fake_aws_env
from moto import mock_aws

from dev import pg_majors
from dev.localpg import LocalCluster

_db_numbers = itertools.count(1)
pytest_plugins = ["worker_timeout"]


def pytest_configure(config):
    """A temporary folder of this run's own: pytest's default keeps the three newest runs of
    the machine and deletes older ones, clusters and all, even while another suite still uses
    them (two suites at once crashed each other's servers). It is in memory when the machine
    has room there (in_memory_when_there_is_room)."""
    if not config.option.basetemp:
        config.option.basetemp = tempfile.mkdtemp(prefix=f"{BASETEMP_PREFIX}{os.getpid()}-",
                                                  dir=in_memory_when_there_is_room())
        config.stash[_own_basetemp] = config.option.basetemp
    if not hasattr(config, "workerinput"):
        compile_the_project_once()


BASETEMP_PREFIX = "nightly-copy-tests-"
MEMORY = Path("/dev/shm")
ROOM_IN_MEMORY = 4 * 2**30  # a run's clusters and files peak at about 3 GB, all workers together


def in_memory_when_there_is_room(memory: Path = MEMORY) -> str | None:
    """/dev/shm (tmpfs) when it has room for a run, else None: the system's temporary folder.

    The clusters' servers spent two thirds of their CPU in the kernel on this machine's ext4
    (105 of 150 core-s: creating databases, writing tables and WAL); in memory the whole run
    takes a third less CPU and time. Nothing here needs to survive the machine (fsync is off
    already). A container's /dev/shm (64 MB) has no room: the run stays on disk.

    The folders of earlier runs that were killed before they could remove their own (their
    process is gone) are removed first: in memory they would hold the RAM until a reboot."""
    if not memory.is_dir():
        return None
    for folder in memory.glob(f"{BASETEMP_PREFIX}*"):
        owner = re.match(rf"{BASETEMP_PREFIX}(\d+)-", folder.name)
        if owner and not process_alive(int(owner[1])):
            shutil.rmtree(folder, ignore_errors=True)
    room = os.statvfs(memory)
    return str(memory) if room.f_bavail * room.f_frsize >= ROOM_IN_MEMORY else None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def compile_the_project_once() -> None:
    """This machine and CI set PYTHONDONTWRITEBYTECODE: every process that imports copier
    compiles its 4,500 lines again (60 ms of CPU), and each copier run with --jobs N starts N
    of them. Compiled here once, the test workers and the copier's job processes load them
    (a script run as `python copier.py` still compiles it, as it does for its users)."""
    root = Path(__file__).resolve().parent.parent
    for folder in (root, root / "deploy", root / "dev"):
        compileall.compile_dir(folder, maxlevels=0, quiet=2)


def pytest_unconfigure(config):
    if _own_basetemp in config.stash:
        shutil.rmtree(config.stash[_own_basetemp], ignore_errors=True)


_own_basetemp = pytest.StashKey[str]()


@pytest.fixture(scope="session", autouse=True)
def moto_with_its_gaps_filled():
    """moto lacks the Logs query definitions the deployment saves: tests/moto_gaps.py adds them."""
    moto_gaps.install()


@pytest.fixture(scope="session", autouse=True)
def aws_models_loaded_once():
    """Every boto3 session reads the AWS service models (JSON) again: moto gives each test a
    new default session, setup_aws.py makes its own, and a client of a session whose models
    are not loaded yet costs ten times one whose are (35 ms each; a setup walk makes a dozen,
    aws_helpers.inventory fourteen). All sessions of the test process share one loader here:
    the models are read-only data, the same files whatever the session."""
    import botocore.session

    create = botocore.session.create_loader
    loaders: dict[str | None, object] = {}

    def shared_loader(search_path_string=None):
        if search_path_string not in loaders:
            loaders[search_path_string] = create(search_path_string)
        return loaders[search_path_string]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.session, "create_loader", shared_loader)
        yield


@pytest.fixture(scope="session", autouse=True)
def aws_clients_made_once():
    """Making a client costs about 9 ms even with the models loaded (botocore copies the
    session's event handlers and builds the client's class): a setup walk makes about twenty,
    the suite thousands. A client keeps nothing of its own between calls but what it was made
    with: one made with the same arguments, region, credentials and AWS_* environment (moto's
    endpoint among them) is the same client, and is made once."""
    import boto3.session

    make = boto3.session.Session.client
    made: dict[tuple, object] = {}

    def client(self, *args, **kwargs):
        credentials = self.get_credentials()
        config = kwargs.pop("config", None)
        key = (repr(args), repr(sorted(kwargs.items())),
               repr(getattr(config, "_user_provided_options", None)), self.region_name,
               credentials and tuple(credentials.get_frozen_credentials()),
               tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))))
        if key not in made:
            made[key] = make(self, *args, config=config, **kwargs)
        return made[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(boto3.session.Session, "client", client)
        yield


@pytest.fixture
def aws(monkeypatch, tmp_path):
    """AWS in this process (moto), with fake credentials and an empty working directory (no
    deploy.toml of the working tree is read). A module that needs more defines its own."""
    set_fake_aws_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    with mock_aws(config=MOTO_CONFIG):
        yield


@pytest.fixture(scope="session")
def moto_server_process():
    """One moto_server for the session (it takes seconds to start); tests get it reset."""
    server = MotoServer().start()
    server.configure({"batch": {"use_docker": False}})
    yield server
    server.stop()


@pytest.fixture
def moto_server(moto_server_process) -> MotoServer:
    """moto_server in its own process, empty: nothing another test made is left in it."""
    moto_server_process.reset()
    return moto_server_process


# Work that mostly waits (the long outages: 90 s of real waiting). In one process it starts
# with the session (the first test's setup, by started_first) so its waiting overlaps the rest
# of the suite, and the tests that read its results run last. Spread over workers (-n, the
# default in pyproject.toml) one worker takes these tests first and waits while the others work.
STARTED_FIRST = ("long_outages",)

# Fixtures too costly to build once in every worker: the tests that use one run in one worker
# (xdist_group), one group per server major in the version tier.
ONE_WORKER = ("long_outages", "moto_server", "standby", "tls", "recorded_history", "build_python")


def waits(item) -> bool:
    return any(name in getattr(item, "fixturenames", ()) for name in STARTED_FIRST)


def worker_group(item) -> str | None:
    names = getattr(item, "fixturenames", ())
    if "servers" in names:  # tests/test_versions.py: the major, or a pair's source
        params = item.callspec.params
        return f"pg{params['pg_cluster'] if 'pg_cluster' in params else params['across'][0]}"
    return next((name for name in ONE_WORKER if name in names), None)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):
        items.sort(key=waits)  # stable: the rest keep their order
        return
    groups = {item.nodeid: worker_group(item) for item in items}
    for item in items:
        if groups[item.nodeid]:
            item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    # The workers take the groups in this order: first the waiting, then the other groups,
    # the largest first, then single tests, which fill the end (a group left for the end ran
    # alone for its whole length while the other workers had finished).
    sizes = Counter(groups.values())
    items.sort(key=lambda item: (not waits(item), groups[item.nodeid] is None,
                                 -sizes[groups[item.nodeid]] if groups[item.nodeid] else 0))


@pytest.fixture(scope="session", autouse=True)
def started_first(request):
    if hasattr(request.config, "workerinput"):
        return
    for name in STARTED_FIRST:
        if any(name in getattr(item, "fixturenames", ()) for item in request.session.items):
            request.getfixturevalue(name)


@pytest.fixture(scope="session")
def long_outages(tmp_path_factory):
    """tests/test_copier_outages.py's four runs through real outages of 30 to 90 s, in the
    background, each with clusters of its own (never the session's)."""
    from test_copier_outages import long_outages_running

    yield from long_outages_running(tmp_path_factory)


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory):
    """The newest installed server, or the major PG_MAJOR names (PG_MAJOR=13 python3 -m pytest)."""
    major = os.environ.get("PG_MAJOR")
    bindir = pg_majors.bindir(int(major)) if major else None
    cluster = LocalCluster.create(tmp_path_factory.mktemp("pg") / "data", bindir=bindir)
    cluster.start()
    yield cluster
    background_databases.wait()
    cluster.stop()


class BackgroundDatabases:
    """Drops the databases of finished tests, and makes the next test's pair ahead, in a
    thread of its own: a test waits for neither (each costs tens to hundreds of ms once the
    cluster holds data: CREATE DATABASE checkpoints). wait() before a cluster stops: all of
    it done, and any failure raised.

    The thread never opens a connection: libpq reads the environment (getenv) while it
    connects, and the next test's setup changes it (monkeypatch.setenv, moto's patch of
    os.environ), which may free the array getenv is reading: the test process died of a
    segmentation fault that way. The test's thread opens the connection."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.failures: list[str] = []
        self.thread: threading.Thread | None = None
        self.connections: dict[str, psycopg2.extensions.connection] = {}
        self.made_ahead: dict[str, queue.Queue] = {}

    def pair(self, cluster: LocalCluster) -> tuple[str, str]:
        """A new source and target database, and the next pair made ahead in the thread."""
        conn = self.connection(cluster)
        try:
            names = self.made_ahead.setdefault(cluster.dsn(), queue.Queue()).get_nowait()
        except queue.Empty:
            names = self.new_names()
            create(conn, *names)
        self.queue.put((conn, create, self.new_names(), self.made_ahead[cluster.dsn()]))
        return names

    def drop(self, cluster: LocalCluster, *names: str) -> None:
        self.queue.put((self.connection(cluster), drop, names, None))

    @staticmethod
    def new_names() -> tuple[str, str]:
        n = next(_db_numbers)
        return f"src_{n}", f"tgt_{n}"

    def connection(self, cluster: LocalCluster):
        if self.thread is None:
            self.thread = threading.Thread(target=self._work, daemon=True, name="test databases")
            self.thread.start()
        conn = self.connections.get(cluster.dsn())
        if conn is None or conn.closed:
            conn = self.connections[cluster.dsn()] = psycopg2.connect(cluster.dsn())
            conn.autocommit = True
        return conn

    def _work(self) -> None:
        while True:
            conn, action, names, made = self.queue.get()
            try:
                action(conn, *names)
                if made is not None:
                    made.put(names)
            except Exception as exc:  # noqa: BLE001 - raised by wait(), in the main thread
                self.failures.append(f"{action.__name__} {names}: {exc}")
            finally:
                self.queue.task_done()

    def wait(self) -> None:
        """Every drop and creation done, and the connections closed: their cluster may stop
        next (the pairs made ahead stay, for the next test)."""
        self.queue.join()
        for conn in self.connections.values():
            conn.close()
        self.connections.clear()
        if self.failures:
            raise RuntimeError(f"test databases failed: {self.failures}")


background_databases = BackgroundDatabases()


def create_databases(cluster: LocalCluster, *names: str) -> None:
    conn = psycopg2.connect(cluster.dsn())
    conn.autocommit = True
    try:
        create(conn, *names)
    finally:
        conn.close()


def create(conn, *names: str) -> None:
    """Empty databases. FILE_COPY (PostgreSQL 15+) copies template0's files instead of logging
    every page of it: less than half the time, in a cluster holding the suite's data."""
    strategy = " STRATEGY = FILE_COPY" if conn.server_version >= 150000 else ""
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f"CREATE DATABASE {name} TEMPLATE template0{strategy}")


def drop(conn, *names: str) -> None:
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f"DROP DATABASE {name} WITH (FORCE)")


def admin_execute(cluster: LocalCluster, statement: str) -> None:
    conn = psycopg2.connect(cluster.dsn())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@dataclass
class Databases:
    """A source and a target database in the session's cluster, with helpers for tests."""

    cluster: LocalCluster
    source_name: str
    target_name: str

    @property
    def source_dsn(self) -> str:
        return self.cluster.dsn(self.source_name)

    @property
    def target_dsn(self) -> str:
        return self.cluster.dsn(self.target_name)

    def _run(self, dsn: str, statement: str, params=None, fetch: bool = False):
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if fetch else None
        finally:
            conn.close()

    def source(self, statement: str, params=None):
        self._run(self.source_dsn, statement, params)

    def target(self, statement: str, params=None):
        self._run(self.target_dsn, statement, params)

    @property
    def source_version(self) -> int:
        return int(self.source_rows("SHOW server_version_num")[0][0])

    @property
    def target_version(self) -> int:
        return int(self.target_rows("SHOW server_version_num")[0][0])

    def source_rows(self, query: str, params=None) -> list[tuple]:
        return self._run(self.source_dsn, query, params, fetch=True)

    def target_rows(self, query: str, params=None) -> list[tuple]:
        return self._run(self.target_dsn, query, params, fetch=True)


@pytest.fixture
def dbs(pg_cluster) -> Databases:
    pair = Databases(pg_cluster, *background_databases.pair(pg_cluster))
    yield pair
    background_databases.drop(pg_cluster, pair.source_name, pair.target_name)


@pytest.fixture
def copier_env(dbs, monkeypatch) -> Databases:
    """Point the copier at the test databases through its local-run environment overrides.

    Every run copies (COPIER_COPY_UNCHANGED): a test of what a refresh keeps or does must see a
    refresh, also when it runs the copier twice on the same source. The tests of unchanged
    tables (tests/test_copier_unchanged.py) unset it."""
    monkeypatch.setenv("SOURCE_DSN", dbs.source_dsn)
    monkeypatch.setenv("TARGET_DSN", dbs.target_dsn)
    monkeypatch.setenv("COPIER_COPY_UNCHANGED", "1")
    monkeypatch.delenv("TABLES", raising=False)
    return dbs


@dataclass
class CopierRun:
    code: int
    events: list[dict]
    stderr: str

    def of(self, event: str) -> list[dict]:
        return [e for e in self.events if e["event"] == event]


@pytest.fixture
def run_copier(copier_env, capfd):
    """Run copier.main in this process (workers of --jobs >1 write to the same descriptors)."""
    import json

    import copier

    def run(*args: str) -> CopierRun:
        capfd.readouterr()
        code = copier.main(list(args))
        out, err = capfd.readouterr()
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return CopierRun(code, events, err)

    return run


@pytest.fixture
def at_moment(monkeypatch):
    """at_moment(name, listener[, once=True]): the listener runs at that moment of the copier's
    run in this process (copier.MOMENTS names them), with the moment's context as keyword
    arguments; with once, the first time only."""
    import copier

    def attach(name: str, listener, once: bool = False) -> None:
        assert name in copier.MOMENTS, name
        fired = []

        def listen(**context):
            if not (once and fired):
                fired.append(context)
                listener(**context)

        monkeypatch.setitem(copier.LISTENERS, name, [*copier.LISTENERS.get(name, []), listen])

    return attach


@pytest.fixture
def night(dbs, run_copier):
    """A small night, as the contract and timeline tests read it: two jobs, two tables copied
    (orders, most of the bytes, in slices unless --no-split), one whose swap a reader blocks
    (it fails with FAILING's options; by default the reader is ended)."""
    dbs.source("CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
    dbs.source("INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 3000) g")
    dbs.source("CREATE TABLE customers (id int PRIMARY KEY, name text)")
    dbs.source("INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 200) g")
    dbs.source("CREATE TABLE locked (id int)")
    dbs.target("CREATE TABLE locked (id int)")

    def run(*args: str):
        reader = psycopg2.connect(dbs.target_dsn)  # a report reading the table all night
        try:
            reader.cursor().execute("LOCK TABLE locked IN ACCESS SHARE MODE")
            return run_copier("TABLES=orders,customers,locked", "--jobs", "2",
                              "--lock-timeout", "0.2", "--lock-retries", "0", *args)
        finally:
            reader.close()

    return run


FAILING = ("--no-kill-readers", "--lock-budget", "0")  # the night's blocked table fails
