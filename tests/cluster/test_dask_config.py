"""``ParallelConfig(executor=...)``: what is accepted, the clear errors (a bad address,
the missing ``dask`` extra, DuckDB with a cluster), no secret shown, and ``stop()`` of a
load whose partitions run on a cluster."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from amp.cluster.task import PartitionTask
from amp.devserver import DevServer
from amp.errors import ConfigError
from amp.streaming.parallel import ParallelConfig, Partition
from clusterkit import DaskCluster
from kit import PG_DSN, SqlDestination, assert_table_equals_chain, connected, free_port

pytestmark = pytest.mark.timeout(300)

QUERY = "SELECT * FROM eth_firehose.logs"
SECRET = "hunter2-s3cret"


def config(**extra: object) -> ParallelConfig:
    return ParallelConfig(num_workers=2, table_name="eth_firehose.blocks", **extra)


def test_threads_by_default_and_a_cluster_by_address_or_client(cluster: DaskCluster) -> None:
    assert config().executor == "threads" and not config().on_cluster
    assert config(executor="tcp://10.0.0.5:8786").on_cluster
    assert config(executor="tls://[::1]:8786").on_cluster
    assert config(executor=cluster.client).on_cluster


@pytest.mark.parametrize("bad", ["thread", "tcp://host", "scheduler:8786", 8786, object()])
def test_an_executor_that_is_none_of_those_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"executor must be 'threads', a Dask scheduler"):
        config(executor=bad)


def test_an_address_with_credentials_is_refused_without_showing_them() -> None:
    with pytest.raises(ConfigError) as refused:
        config(executor=f"tcp://admin:{SECRET}@host:8786")
    assert SECRET not in str(refused.value)


def test_without_the_dask_extra_a_cluster_executor_names_it() -> None:
    """In a process where ``distributed`` cannot be imported (a None entry in
    sys.modules is how Python spells "not installed" for an import)."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["distributed"] = None
        from amp.errors import ConfigError
        from amp.streaming.parallel import ParallelConfig
        assert ParallelConfig(2, "eth_firehose.blocks").executor == "threads"
        try:
            ParallelConfig(2, "eth_firehose.blocks", executor="tcp://127.0.0.1:8786")
        except ConfigError as exc:
            print(exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pip install 'amp-python[dask]'" in done.stdout


def test_duckdb_with_a_cluster_is_refused_naming_the_alternatives(
    cluster: DaskCluster, tmp_path: Path
) -> None:
    with (
        DevServer(port=0, seed=55, initial_blocks=50) as srv,
        connected(srv, "db", "duckdb", {"database": str(tmp_path / "x.duckdb")}) as client,
        pytest.raises(ConfigError) as refused,
    ):
        client.sql(QUERY).load(
            "db", "t", stream=True, parallel_config=config(executor=cluster.address)
        )
    message = str(refused.value)
    assert "duckdb" in message and "executor='threads'" in message
    assert "PostgreSQL" in message


def test_tasks_show_no_secret(cluster: DaskCluster, postgres: SqlDestination) -> None:
    """A password in the connection config and the server token given to Client travel
    inside the pickled task (as the user configured them) but appear nowhere Dask shows
    or logs a task: its key and its repr."""
    task_config = {"dsn": f"{PG_DSN} password={SECRET}"}
    table = postgres.new_table("dask_secret")
    parallel = config(min_block=0, max_block=199, executor=cluster.client)
    with DevServer(port=0, seed=56, initial_blocks=300, max_interval=50) as srv:
        from amp.client import Client

        client = Client(srv.url, auth_token=SECRET)
        try:
            client.configure_connection("pg", "postgresql", task_config)
            results = list(
                client.sql(QUERY).load("pg", table, stream=True, parallel_config=parallel)
            )
        finally:
            client.close()
    assert {r.metadata["worker_id"] for r in results} == {0, 1}
    assert all(SECRET not in repr(r) for r in results)
    keys = cluster.client.run_on_scheduler(
        lambda dask_scheduler: [str(key) for key in dask_scheduler.task_prefixes]
    )
    assert keys and all(SECRET not in key for key in keys), keys
    task = PartitionTask(
        server_url=srv.url, auth_token=SECRET, dead_peer_timeout=None, connection="pg",
        loader="postgresql", loader_module="amp.loaders.postgresql",
        connection_config=task_config, table=table, sql=QUERY, header=None,
        config=config(), partitions=(), partition=Partition(0, 0, 99), token="t", run_key="k",
    )  # fmt: skip
    assert SECRET not in repr(task) and "partition 0" in repr(task)


def test_stop_ends_the_tasks_promptly_and_a_rerun_finishes(
    cluster: DaskCluster, postgres: SqlDestination
) -> None:
    """``stop()`` after the first result: the tasks stop at their next microbatch
    boundary (the run's owner variable), the iteration ends, nothing runs on the
    cluster; the same load again resumes from the checkpoints and ends exact."""
    table = postgres.new_table("dask_stop")
    features = {"dsn": PG_DSN, "checkpoint": {"enabled": True}, "idempotency": {"enabled": True}}
    parallel = config(min_block=0, max_block=1_499, executor=cluster.address)
    with (
        DevServer(port=0, seed=57, initial_blocks=1_600, max_interval=50) as srv,
        connected(srv, "pg", "postgresql", features) as client,
    ):
        srv.faults.set_latency(0.25)  # 15 microbatches a partition: 3.75 s at least
        run = client.sql(QUERY).load("pg", table, stream=True, parallel_config=parallel)
        first = next(run)
        assert first.success
        run.stop()
        rest = list(run)
        assert run.partitions is not None
        statuses = {state.status for state in run.partitions.values()}
        assert "stopped" in statuses and statuses <= {"stopped", "done"}, statuses
        assert not any(cluster.client.processing().values()), "a task still runs"
        assert len(rest) < 20, "the load ran on instead of stopping"
        srv.faults.set_latency(0)
        again = list(client.sql(QUERY).load("pg", table, stream=True, parallel_config=parallel))
        assert again, "the rerun found nothing left to do"
    assert_table_equals_chain(postgres, table, srv.chain, "logs", blocks=(0, 1_499))


def test_a_scheduler_that_does_not_answer_is_a_clear_error() -> None:
    """Nothing listens at the address: the load fails within the 10 s connect timeout,
    naming the address and what to do."""
    address = f"tcp://127.0.0.1:{free_port()}"
    with (
        DevServer(port=0, seed=58, initial_blocks=50) as srv,
        connected(srv, "pg", "postgresql", {"dsn": PG_DSN}) as client,
        pytest.raises(ConfigError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1"),
    ):
        run = client.sql(QUERY).load(
            "pg", "never_written", stream=True,
            parallel_config=config(min_block=0, max_block=9, executor=address),
        )  # fmt: skip
        list(run)
