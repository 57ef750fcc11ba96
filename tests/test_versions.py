"""The version tier: a representative part of the copier suite on a server of every supported
major, and copies across majors (the oldest source into the newest target, and back).

The servers come from dev/pg_majors.py (the distribution's packages, else the npm binaries
dev/install.sh --tests fetched); a missing one is an error, not a skip. One major alone:
``python3 -m pytest -q tests/test_versions.py -k pg13``; one pair: ``-k source13``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from conftest import Databases, _db_numbers, background_databases, create_databases
from test_copier_reporting_side import (  # noqa: F401  (what the reporting side built, and its fixture)
    customers,
    test_a_partitioned_reporting_table_stays_partitioned,
    test_foreign_keys_to_and_from_copied_tables_survive_and_are_validated_again,
    test_rules_policies_defaults_children_and_publications_survive,
)
from test_copier_standby import (  # noqa: F401  (the replica tests and their fixtures)
    from_replica,
    standby,
    test_a_replica_source_proves_a_table_unchanged_after_a_night_that_found_it_so,
    test_copies_from_a_read_replica_with_parallel_jobs,
)
from test_copier_swap import (  # noqa: F401  (the swap tests and their fixture)
    orders,
    test_missing_target_table_is_created_with_keys_indexes_and_checks,
    test_row_level_security_and_its_policies_survive,
    test_statistics_settings_and_objects_come_from_the_source_and_are_built,
    test_the_tables_own_triggers_survive_in_their_state,
    test_views_grants_owner_comments_and_options_survive_and_see_the_new_data,
)
from test_copier_types import (  # noqa: F401  (the type tests and their fixture)
    everything,
    test_composite_and_range_types_are_made_on_the_target_and_every_value_round_trips,
    test_every_column_type_round_trips_exactly,
)
from test_copier_unchanged import (  # noqa: F401  (the proof of an unchanged source, and its fixture)
    skipping,
    test_a_row_written_by_a_transaction_open_during_the_last_read_is_seen,
    test_an_unchanged_table_is_proved_so_without_reading_it,
)

from dev import pg_majors
from dev.localpg import LocalCluster

OLDEST, NEWEST = min(pg_majors.SUPPORTED_MAJORS), max(pg_majors.SUPPORTED_MAJORS)


class Servers:
    """One server per major, started when a test first needs it, stopped at the session's end."""

    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.started: dict[int, LocalCluster] = {}

    def __getitem__(self, major: int) -> LocalCluster:
        if major not in self.started:
            datadir = self.tmp_path_factory.mktemp(f"pg{major}") / "data"
            cluster = LocalCluster.create(datadir, bindir=pg_majors.bindir(major))
            cluster.start()
            self.started[major] = cluster
        return self.started[major]

    def stop(self) -> None:
        background_databases.wait()
        for cluster in self.started.values():
            cluster.stop()


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    started = Servers(tmp_path_factory)
    yield started
    started.stop()


@pytest.fixture(scope="module", params=pg_majors.SUPPORTED_MAJORS, ids=lambda major: f"pg{major}")
def pg_cluster(request, servers):
    """Overrides the session's cluster: every test here runs once per major."""
    return servers[request.param]


def test_each_server_is_the_major_it_stands_for(request, dbs):
    assert dbs.source_version // 10000 == request.node.callspec.params["pg_cluster"]


def test_every_job_reads_the_runs_one_snapshot(copier_env, run_copier, at_moment):
    """A row committed after the run exported its snapshot is in no table of any job."""
    copier_env.source("CREATE TABLE first (id int); CREATE TABLE second (id int);"
                      "INSERT INTO first VALUES (1); INSERT INTO second VALUES (1)")
    def write_after_the_export(conn):
        copier_env.source("INSERT INTO first VALUES (2); INSERT INTO second VALUES (2)")

    at_moment("snapshot_taken", write_after_the_export)
    result = run_copier("TABLES=first,second", "--jobs", "2")

    assert result.code == 0, result.stderr
    # Worker processes, not the one that exported the snapshot (which job takes which: whichever is free).
    assert {e["job"] for e in result.of("table_copied")} <= {1, 2}
    assert copier_env.source_rows("SELECT count(*) FROM first JOIN second USING (id)") == [(2,)]
    assert copier_env.target_rows("SELECT count(*) FROM first JOIN second USING (id)") == [(1,)]


@dataclass
class AcrossServers(Databases):
    """A source database on one server and a target database on another."""

    target_cluster: LocalCluster | None = None

    @property
    def target_dsn(self) -> str:
        return self.target_cluster.dsn(self.target_name)


def pair_id(pair: tuple[int, int]) -> str:
    return f"source{pair[0]}-target{pair[1]}"


@pytest.fixture(params=[(OLDEST, NEWEST), (NEWEST, OLDEST)], ids=pair_id)
def across(request, servers):
    source, target = servers[request.param[0]], servers[request.param[1]]
    n = next(_db_numbers)
    pair = AcrossServers(source, f"src_{n}", f"tgt_{n}", target)
    create_databases(source, pair.source_name)
    create_databases(target, pair.target_name)
    yield pair
    background_databases.drop(source, pair.source_name)
    background_databases.drop(target, pair.target_name)


class TestAcrossMajors:
    """The same tests but the replica, with the source and the target on different majors."""

    @pytest.fixture
    def dbs(self, across):
        return across

    test_every_column_type_round_trips_exactly = staticmethod(test_every_column_type_round_trips_exactly)
    test_composite_and_range_types = staticmethod(
        test_composite_and_range_types_are_made_on_the_target_and_every_value_round_trips)
    test_views_grants_owner_comments_and_options_survive = staticmethod(
        test_views_grants_owner_comments_and_options_survive_and_see_the_new_data)
    test_row_level_security_and_its_policies_survive = staticmethod(
        test_row_level_security_and_its_policies_survive)
    test_the_tables_own_triggers_survive_in_their_state = staticmethod(
        test_the_tables_own_triggers_survive_in_their_state)
    test_every_job_reads_the_runs_one_snapshot = staticmethod(test_every_job_reads_the_runs_one_snapshot)

    @staticmethod
    def test_not_null_constraints_are_named_as_the_target_names_them(copier_env, run_copier):
        """From 18 on NOT NULL constraints have names: the source's, or those 18 would choose."""
        long_name = "a_table_name_long_enough_to_be_cut_short_in_constraint_names"
        ddl = (f"CREATE TABLE {long_name} (id int PRIMARY KEY,"
               " a_column_name_that_is_long_enough_as_well_to_be_cut_short text NOT NULL, b int)")
        copier_env.source(ddl)
        copier_env.target(f"CREATE SCHEMA made_here; SET search_path = made_here; {ddl}")
        names = ("SELECT conname, contype FROM pg_constraint WHERE conrelid = %s::regclass"
                 " ORDER BY conname")

        for _ in range(2):  # created, then replaced
            result = run_copier(f"TABLES={long_name}")
            assert result.code == 0, result.stderr
            copied = copier_env.target_rows(names, (f"public.{long_name}",))
            assert copied == copier_env.target_rows(names, (f"made_here.{long_name}",))
        if copier_env.target_version >= 180000:
            assert sorted(contype for _, contype in copied) == ["n", "n", "p"]

    @staticmethod
    @pytest.mark.parametrize("across", [(NEWEST, OLDEST)], indirect=True, ids=pair_id)
    def test_a_type_the_targets_major_lacks_fails_that_table_naming_it(copier_env, run_copier):
        copier_env.source("CREATE TABLE spans (id int, r int4multirange); CREATE TABLE fine (id int);"
                          "INSERT INTO spans VALUES (1, '{[1,3)}'); INSERT INTO fine VALUES (1)")

        result = run_copier("TABLES=spans,fine")

        assert result.code == 1
        assert [e["table"] for e in result.of("table_failed")] == ["public.spans"]
        assert 'public.spans: type "int4multirange" does not exist' in result.stderr
        assert copier_env.target_rows("SELECT id FROM fine") == [(1,)]


def test_a_major_missing_from_the_machine_is_an_error_that_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(pg_majors, "CACHE", tmp_path)
    monkeypatch.setattr(pg_majors, "distribution_bindir", lambda major: None)

    with pytest.raises(pg_majors.MissingMajor,
                       match="no PostgreSQL 13 server binaries .*run dev/install.sh --tests"):
        pg_majors.bindir(13)

