"""Throughput and memory of the amp dev server, against its in-process limit.

Run by hand (about a minute on 2 cores with the defaults)::

    /work/main/.venv/bin/python bench/devserver_throughput.py
    /work/main/.venv/bin/python bench/devserver_throughput.py --blocks 200000 --repeat 7

What it measures, all with the bare ``pyarrow.flight`` client (``get_flight_info`` on a
Flight SQL ``CommandStatementQuery``, ``do_get``, ``read_chunk``):

1. Baselines, in this process, on the same blocks in chunks of ``--max-interval``: the
   cost of generating the ``logs`` rows (``chain.snapshot(...).table('logs')``), of
   writing them as an Arrow IPC stream, and of the server's other per-microbatch steps
   (DataFusion execution, FlightData framing). Measured twice: with glibc's malloc
   defaults, as an ``amp dev`` process runs, and with malloc tuned (``mallopt``) so that
   freed memory is reused instead of returned to the kernel and faulted in again. The
   tuned "generation + IPC" is the limit the server's rate is compared to. A pyarrow
   ``FlightServerBase`` serving the same rows pre-generated gives the Flight transport's
   own ceiling on this machine.
2. A batch query ``SELECT * FROM eth_firehose.logs`` and a streaming backfill of the
   same query with ``SETTINGS stream = true`` from block 0 to the head (read until the
   microbatch whose range ends at the head is complete, then cancel), against a dev
   server in this process (as the ``amp_devserver`` fixture runs it) and against
   ``amp dev`` in a separate process.
3. The peak resident memory of an ``amp dev`` process during a streaming backfill and
   during a batch query, for two chain sizes: VmRSS from /proc/<pid>/status sampled
   every few milliseconds, and the kernel's own high-water mark VmHWM, one fresh
   process per measurement.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.flight as flight
from rich.console import Console
from rich.table import Table

from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from amp.devserver.service import _ipc
from amp.devserver.sql import QueryEngine
from amp.flight.protowire import encode_flight_data, encode_statement_query

BATCH_SQL = "SELECT * FROM eth_firehose.logs"
STREAM_SQL = "SELECT * FROM eth_firehose.logs SETTINGS stream = true"
MB = 1e6
LISTENING = re.compile(r"listening on (grpc://\S+)")
# The size of a real microbatch's app_metadata (one range, two hashes).
FAKE_METADATA = b"x" * 250
# glibc mallopt parameters, and the values used for the "malloc tuned" baseline.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TUNED_MMAP_THRESHOLD = 64 << 20
TUNED_TRIM_THRESHOLD = 512 << 20

console = Console(width=None if sys.stdout.isatty() else 150)
T = TypeVar("T")


# -- reading a query ------------------------------------------------------------------


@dataclass
class QueryRun:
    """One query read to its end: rows and Arrow bytes received, and its timings."""

    rows: int = 0
    arrow_bytes: int = 0
    messages: int = 0
    microbatches: int = 0
    plan_seconds: float = 0.0
    first_data_seconds: float = 0.0  # from do_get to the first data message
    seconds: float = 0.0  # get_flight_info + do_get to the last message
    server_cpu_seconds: float | None = None  # user + system, when the server is a process

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.arrow_bytes / MB / self.seconds


def run_query(url: str, sql: str, head: int | None) -> QueryRun:
    """Batch (``head`` None): read to the end of the stream. Streaming: read until the
    microbatch ending at ``head`` is complete, then cancel."""
    client = flight.connect(url)
    run = QueryRun()
    try:
        started = time.perf_counter()
        info = client.get_flight_info(
            flight.FlightDescriptor.for_command(encode_statement_query(sql))
        )
        planned = time.perf_counter()
        run.plan_seconds = planned - started
        reader = client.do_get(info.endpoints[0].ticket)
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                break
            run.messages += 1
            if chunk.data is not None and chunk.data.num_rows:
                if not run.rows:
                    run.first_data_seconds = time.perf_counter() - planned
                run.rows += chunk.data.num_rows
                run.arrow_bytes += chunk.data.nbytes
            if chunk.app_metadata is None:
                continue
            metadata = json.loads(chunk.app_metadata.to_pybytes())
            if not metadata["ranges_complete"]:
                continue
            run.microbatches += 1
            if head is not None and metadata["ranges"][0]["numbers"]["end"] == head:
                break
        run.seconds = time.perf_counter() - started
        if head is not None:
            reader.cancel()
    finally:
        client.close()
    return run


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def repeat_query(
    url: str, sql: str, head: int | None, repeat: int, pid: int | None = None
) -> list[QueryRun]:
    runs = []
    for _ in range(repeat):
        cpu = process_cpu_seconds(pid) if pid is not None else 0.0
        run = run_query(url, sql, head)
        if pid is not None:
            run.server_cpu_seconds = process_cpu_seconds(pid) - cpu
        runs.append(run)
    if len({run.rows for run in runs}) != 1:
        raise AssertionError(f"row counts differ between runs: {[run.rows for run in runs]}")
    return runs


def median_run(runs: list[QueryRun]) -> QueryRun:
    return sorted(runs, key=lambda run: run.seconds)[len(runs) // 2]


# -- baselines ------------------------------------------------------------------------


@dataclass
class Baseline:
    """Seconds per stage over the whole chain; each the best of a few passes."""

    rows: int
    arrow_bytes: int
    ipc_bytes: int
    generate_seconds: float
    ipc_seconds: float
    datafusion_seconds: float
    framing_seconds: float
    # CPU seconds of this process (time.process_time) for generation and IPC.
    generate_cpu_seconds: float
    ipc_cpu_seconds: float

    def rate(self, seconds: float) -> float:
        return self.rows / seconds

    @property
    def limit_seconds(self) -> float:
        return self.generate_seconds + self.ipc_seconds

    @property
    def limit_cpu_seconds(self) -> float:
        return self.generate_cpu_seconds + self.ipc_cpu_seconds


def chunks(chain: SimulatedChain, step: int) -> Iterator[tuple[int, int]]:
    for start in range(chain.first_block, chain.head + 1, step):
        yield start, min(chain.head, start + step - 1)


def measure_baseline(
    chain: SimulatedChain, max_interval: int, rows_per_message: int, passes: int = 3
) -> Baseline:
    """Each stage of serving the chain on the same chunks, best of ``passes``. Generation
    is timed in passes of its own: between the other stages it pays for their cache
    churn."""
    engine = QueryEngine("eth_firehose", rows_per_message)
    planned = engine.plan(STREAM_SQL)
    generate: list[tuple[float, float]] = []
    for _ in range(passes):
        started, started_cpu = time.perf_counter(), time.process_time()
        for start, end in chunks(chain, max_interval):
            chain.snapshot(start, end).table("logs")
        generate.append((time.perf_counter() - started, time.process_time() - started_cpu))
    stages: list[tuple[float, float, float, float]] = []
    rows = arrow_bytes = ipc_bytes = 0
    for _ in range(passes):
        rows = arrow_bytes = ipc_bytes = 0
        ipc = ipc_cpu = datafusion = framing = 0.0
        for start, end in chunks(chain, max_interval):
            table = chain.snapshot(start, end).table("logs")
            t0, c0 = time.perf_counter(), time.process_time()
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            ipc_bytes += sink.getvalue().size
            t1, c1 = time.perf_counter(), time.process_time()
            batches = engine.execute(planned, lambda name, table=table: table)
            t2 = time.perf_counter()
            for batch in batches:
                for offset in range(0, batch.num_rows, rows_per_message):
                    header, body = _ipc(batch.slice(offset, rows_per_message))
                    encode_flight_data(header, body, FAKE_METADATA)
            t3 = time.perf_counter()
            rows += table.num_rows
            arrow_bytes += table.nbytes
            ipc, ipc_cpu = ipc + t1 - t0, ipc_cpu + c1 - c0
            datafusion += t2 - t1
            framing += t3 - t2
            del table, batches, sink
        stages.append((ipc, ipc_cpu, datafusion, framing))
    return Baseline(
        rows=rows,
        arrow_bytes=arrow_bytes,
        ipc_bytes=ipc_bytes,
        generate_seconds=min(wall for wall, _ in generate),
        ipc_seconds=min(stage[0] for stage in stages),
        datafusion_seconds=min(stage[2] for stage in stages),
        framing_seconds=min(stage[3] for stage in stages),
        generate_cpu_seconds=min(cpu for _, cpu in generate),
        ipc_cpu_seconds=min(stage[1] for stage in stages),
    )


def tune_malloc() -> bool:
    """Make glibc keep freed memory for reuse (no munmap/trim, no page faults again)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(
            libc.mallopt(M_MMAP_THRESHOLD, TUNED_MMAP_THRESHOLD)
            and libc.mallopt(M_TRIM_THRESHOLD, TUNED_TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):
        return False


class _TableServer(flight.FlightServerBase):
    """pyarrow's own Flight server serving one pre-built table: the transport ceiling."""

    def __init__(self, table: pa.Table) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self.table = table

    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        endpoint = flight.FlightEndpoint(b"all", [])
        return flight.FlightInfo(self.table.schema, descriptor, [endpoint], -1, -1)

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.RecordBatchStream:
        return flight.RecordBatchStream(self.table)


def measure_transport(chain: SimulatedChain, max_interval: int, repeat: int) -> list[QueryRun]:
    parts = [chain.snapshot(start, end).table("logs") for start, end in chunks(chain, max_interval)]
    table = pa.concat_tables(parts)
    del parts
    with _TableServer(table) as server:
        return repeat_query(f"grpc://127.0.0.1:{server.port}", BATCH_SQL, None, repeat)


# -- amp dev in its own process -------------------------------------------------------


class AmpDevProcess:
    """``amp dev --port 0 --initial-blocks N`` in a child process; stopped with SIGTERM."""

    def __init__(
        self, blocks: int, max_interval: int, seed: int, env: dict[str, str] | None = None
    ) -> None:
        self.blocks = blocks
        self.args = [
            sys.executable,
            "-m",
            "amp.cli",
            "dev",
            "--port",
            "0",
            "--seed",
            str(seed),
            "--initial-blocks",
            str(blocks),
            "--max-interval",
            str(max_interval),
        ]
        self.env = {**os.environ, **(env or {})}
        self.stderr: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    @property
    def head(self) -> int:
        return self.blocks - 1

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> AmpDevProcess:
        self.process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        # Drain stderr (the log) so the child never blocks on a full pipe.
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        line = self.process.stdout.readline()
        match = LISTENING.search(line)
        if match is None:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"amp dev did not start: {line!r}\n{''.join(self.stderr)}")
        self.url = match.group(1)
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        return self

    def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a background thread."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class MemoryRun:
    mode: str
    blocks: int
    rows: int
    arrow_mb: float
    idle_mib: float  # after start-up and one GetFlightInfo (DataFusion initialised)
    peak_mib: float  # sampled VmRSS
    hwm_mib: float  # VmHWM: the kernel's peak
    seconds: float
    samples: int

    @property
    def growth_mib(self) -> float:
        return self.hwm_mib - self.idle_mib


def measure_memory(
    mode: str,
    blocks: int,
    max_interval: int,
    seed: int,
    interval: float,
    env: dict[str, str] | None = None,
) -> MemoryRun:
    with AmpDevProcess(blocks, max_interval, seed, env) as server:
        client = flight.connect(server.url)
        client.get_flight_info(
            flight.FlightDescriptor.for_command(encode_statement_query(STREAM_SQL))
        )
        client.close()
        time.sleep(0.2)
        idle = status_kib(server.pid, "VmRSS")
        with RssSampler(server.pid, interval) as sampler:
            if mode == "stream":
                run = run_query(server.url, STREAM_SQL, server.head)
            else:
                run = run_query(server.url, BATCH_SQL, None)
        hwm = status_kib(server.pid, "VmHWM")
    return MemoryRun(
        mode=mode,
        blocks=blocks,
        rows=run.rows,
        arrow_mb=run.arrow_bytes / MB,
        idle_mib=idle / 1024,
        peak_mib=max(sampler.peak_kib, idle) / 1024,
        hwm_mib=hwm / 1024,
        seconds=run.seconds,
        samples=sampler.samples,
    )


# -- the report -----------------------------------------------------------------------


@dataclass
class Results:
    parameters: dict[str, object]
    machine: dict[str, object]
    baseline_default: Baseline | None = None  # glibc malloc defaults, as amp dev runs
    baseline_tuned: Baseline | None = None  # malloc tuned: the limit
    queries: dict[str, list[QueryRun]] = field(default_factory=dict)
    memory: list[MemoryRun] = field(default_factory=list)

    @property
    def limit(self) -> Baseline | None:
        return self.baseline_tuned or self.baseline_default


def machine() -> dict[str, object]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "kernel": platform.release(),
        "load average at start": " ".join(f"{load:.2f}" for load in os.getloadavg()),
    }


def print_baselines(results: Results) -> None:
    base = results.limit
    assert base is not None
    default, tuned = results.baseline_default, results.baseline_tuned
    table = Table(
        title=f"In-process baselines, eth_firehose.logs, {results.parameters['blocks']:,} "
        f"blocks ({base.rows:,} rows, {base.arrow_bytes / MB:,.0f} MB of Arrow data), "
        f"in chunks of {results.parameters['max_interval']:,} blocks"
    )
    for column in ("stage", "s, malloc defaults", "s, malloc tuned", "rows/s", "MB/s"):
        table.add_column(column, justify="left" if column == "stage" else "right")

    def seconds_of(baseline: Baseline | None, attribute: str) -> str:
        return "" if baseline is None else f"{getattr(baseline, attribute):.3f}"

    for name, attribute in (
        ("generation: chain.snapshot(...).table('logs')", "generate_seconds"),
        ("Arrow IPC stream write", "ipc_seconds"),
        ("generation + IPC: the limit", "limit_seconds"),
        ("(server step) DataFusion execute, excl. generation", "datafusion_seconds"),
        ("(server step) FlightData framing (_ipc + protowire)", "framing_seconds"),
    ):
        seconds = getattr(base, attribute)
        table.add_row(
            name,
            seconds_of(default, attribute),
            seconds_of(tuned, attribute),
            f"{base.rate(seconds):,.0f}",
            f"{base.arrow_bytes / MB / seconds:,.0f}",
        )
    console.print(table)
    console.print(
        "rows/s and MB/s from the "
        + ("malloc-tuned" if tuned is not None else "malloc-defaults")
        + " column. malloc defaults: this process as it started (glibc returns freed large "
        "blocks to the kernel and faults them in again); malloc tuned: after "
        f"mallopt(M_MMAP_THRESHOLD={TUNED_MMAP_THRESHOLD >> 20} MiB, "
        f"M_TRIM_THRESHOLD={TUNED_TRIM_THRESHOLD >> 20} MiB). Best of 3 passes each."
    )


def print_queries(results: Results) -> None:
    base = results.limit
    assert base is not None
    limit = base.rate(base.limit_seconds)
    limit_cpu = base.limit_cpu_seconds / base.rows
    table = Table(title="Queries over Flight (pyarrow.flight client, read_chunk)")
    for column in (
        "query",
        "rows/s",
        "MB/s",
        "first data",
        "server CPU",
        "vs limit",
        "vs limit, CPU",
    ):
        table.add_column(column, justify="left" if column == "query" else "right")
    for name, runs in results.queries.items():
        run = median_run(runs)
        cpu = run.server_cpu_seconds
        table.add_row(
            name,
            f"{run.rows_per_second:,.0f}",
            f"{run.mb_per_second:,.0f}",
            f"{run.first_data_seconds * 1000:,.0f} ms",
            "" if cpu is None else f"{cpu / run.seconds:.2f} cores",
            f"{run.rows_per_second / limit:.2f}x",
            "" if cpu is None else f"{limit_cpu / (cpu / run.rows):.2f}x",
        )
    console.print(table)
    console.print(
        f"Medians of {results.parameters['repeat']} runs. A query's time runs from "
        "get_flight_info to its last message (streaming: the end of the microbatch ending "
        "at the head). first data: do_get to the first non-empty batch. server CPU: the "
        "amp dev process's user+system CPU seconds per wall second. vs limit: rows/s over "
        "the in-process generation + IPC rate. vs limit, CPU: the same ratio in CPU time "
        "per row (in-process generation + IPC over the server's): immune to time-sharing "
        "with other processes, not to cache and memory contention. MB = 10^6 bytes of "
        "Arrow data (RecordBatch.nbytes)."
    )


def print_memory(results: Results) -> None:
    table = Table(title="amp dev process memory (one fresh process per row)")
    for column in (
        "query",
        "blocks",
        "rows",
        "Arrow MB sent",
        "RSS idle MiB",
        "peak RSS MiB (sampled)",
        "VmHWM MiB",
        "growth MiB",
        "seconds",
    ):
        table.add_column(column, justify="left" if column == "query" else "right")
    for run in results.memory:
        table.add_row(
            "streaming backfill" if run.mode == "stream" else "batch",
            f"{run.blocks:,}",
            f"{run.rows:,}",
            f"{run.arrow_mb:,.0f}",
            f"{run.idle_mib:,.0f}",
            f"{run.peak_mib:,.0f}",
            f"{run.hwm_mib:,.0f}",
            f"{run.growth_mib:,.0f}",
            f"{run.seconds:.1f}",
        )
    console.print(table)
    console.print(
        "idle: VmRSS after start-up and one GetFlightInfo; growth: VmHWM - idle. A "
        "streaming backfill holds one microbatch at a time, so its growth should not "
        "depend on the chain's length."
    )


def print_report(results: Results) -> None:
    params = " ".join(f"{key}={value}" for key, value in results.parameters.items())
    console.print(f"[bold]Parameters:[/bold] {params}")
    console.print(
        "[bold]Machine:[/bold] "
        + ", ".join(f"{key} {value}" for key, value in results.machine.items())
    )
    if results.limit is not None:
        print_baselines(results)
        print_queries(results)
    if results.memory:
        print_memory(results)


def to_json(results: Results) -> dict[str, object]:
    def run_dict(run: QueryRun) -> dict[str, object]:
        return {**asdict(run), "rows_per_second": run.rows_per_second}

    def baseline_dict(baseline: Baseline | None) -> dict[str, object] | None:
        return None if baseline is None else asdict(baseline)

    return {
        "parameters": results.parameters,
        "machine": results.machine,
        "baseline_default": baseline_dict(results.baseline_default),
        "baseline_tuned": baseline_dict(results.baseline_tuned),
        "queries": {
            name: [run_dict(run) for run in runs] for name, runs in results.queries.items()
        },
        "memory": [{**asdict(run), "growth_mib": run.growth_mib} for run in results.memory],
    }


# -- main -----------------------------------------------------------------------------


def step(message: str, action: Callable[[], T]) -> T:
    console.print(f"[dim]… {message}[/dim]")
    return action()


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--server-env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=100_000, help="chain length, throughput")
    parser.add_argument("--repeat", type=int, default=5, help="runs per query (median shown)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-interval", type=int, default=1000, help="blocks per microbatch")
    parser.add_argument(
        "--memory-blocks",
        type=int,
        nargs="*",
        default=[10_000, 100_000],
        help="chain lengths for the memory runs (none: skip them)",
    )
    parser.add_argument(
        "--memory-modes",
        nargs="*",
        choices=["stream", "batch"],
        default=["stream", "batch"],
        help="queries for the memory runs",
    )
    parser.add_argument("--sample-interval", type=float, default=0.005, help="RSS sampling, s")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the amp dev processes, e.g. MALLOC_TRIM_THRESHOLD_=536870912",
    )
    parser.add_argument(
        "--no-transport-ceiling", action="store_true", help="skip the pyarrow Flight server run"
    )
    parser.add_argument("--no-subprocess", action="store_true", help="skip amp dev throughput")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.blocks < 1 or args.repeat < 1:
        parser.error("--blocks and --repeat must be >= 1")
    try:
        server_env = parse_env(args.server_env)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))

    rows_per_message = 65_536  # DevServer's default; amp dev does not change it
    results = Results(
        parameters={
            "blocks": args.blocks,
            "repeat": args.repeat,
            "seed": args.seed,
            "max_interval": args.max_interval,
            "rows_per_message": rows_per_message,
            "memory_blocks": args.memory_blocks,
            "memory_modes": args.memory_modes,
            "server_env": server_env,
        },
        machine=machine(),
    )
    chain = SimulatedChain(seed=args.seed, initial_blocks=args.blocks)
    # First, while this process's allocator is as fresh as a new amp dev process's.
    results.baseline_default = step(
        "in-process baselines, malloc defaults",
        lambda: measure_baseline(chain, args.max_interval, rows_per_message),
    )

    head = args.blocks - 1
    with DevServer(
        port=0, seed=args.seed, initial_blocks=args.blocks, max_interval=args.max_interval
    ) as server:
        results.queries["DevServer in-process: batch query"] = step(
            "in-process dev server, batch",
            lambda: repeat_query(server.url, BATCH_SQL, None, args.repeat),
        )
        results.queries["DevServer in-process: streaming backfill"] = step(
            "in-process dev server, streaming",
            lambda: repeat_query(server.url, STREAM_SQL, head, args.repeat),
        )
    if not args.no_subprocess:
        with AmpDevProcess(args.blocks, args.max_interval, args.seed, server_env) as process:
            results.queries["amp dev process: batch query"] = step(
                "amp dev process, batch",
                lambda: repeat_query(process.url, BATCH_SQL, None, args.repeat, process.pid),
            )
            results.queries["amp dev process: streaming backfill"] = step(
                "amp dev process, streaming",
                lambda: repeat_query(
                    process.url, STREAM_SQL, process.head, args.repeat, process.pid
                ),
            )
    for mode in args.memory_modes:
        for blocks in args.memory_blocks:
            results.memory.append(
                step(
                    f"memory: amp dev, {mode}, {blocks:,} blocks",
                    lambda mode=mode, blocks=blocks: measure_memory(
                        mode, blocks, args.max_interval, args.seed, args.sample_interval, server_env
                    ),
                )
            )

    # Last: malloc tuning cannot be undone, and the in-process server ran without it.
    if tune_malloc():
        results.baseline_tuned = step(
            "in-process baselines, malloc tuned",
            lambda: measure_baseline(chain, args.max_interval, rows_per_message),
        )
    if not args.no_transport_ceiling:
        results.queries["pyarrow Flight server, pre-generated (transport ceiling)"] = step(
            "pyarrow Flight transport ceiling",
            lambda: measure_transport(chain, args.max_interval, args.repeat),
        )
    expected = results.baseline_default.rows
    for name, runs in results.queries.items():
        if runs[0].rows != expected:
            raise AssertionError(f"{name}: {runs[0].rows} rows, the chain has {expected}")

    console.print()
    print_report(results)
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
