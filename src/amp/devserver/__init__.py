"""An Amp-compatible server on your own machine: a simulated chain behind Arrow Flight SQL.

Why: every pipeline amp runs is run against an Amp server, and a real one needs a live
chain. ``DevServer`` speaks the wire protocol of a real server (the project's
``amp-protocol.md``), reorgs and faults included, so that a pipeline tested against it
holds against production::

    from amp.devserver import DevServer

    with DevServer(port=0, seed=1, initial_blocks=100) as srv:
        srv.chain.mine(5)
        srv.chain.reorg(3)
        srv.faults.fail_next('do_get', 'UNAVAILABLE', times=1)
        oracle = srv.chain.canonical_table('logs')
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from types import TracebackType

import grpc

from amp.devserver.chain import ReorgEvent, SimulatedChain
from amp.devserver.faults import Faults
from amp.devserver.service import FlightService, ServiceOptions

__all__ = ["DevServer", "Faults", "ReorgEvent", "SimulatedChain"]

log = logging.getLogger("amp.devserver")


class _BlockProducer(threading.Thread):
    """Mines a block every ``block_time`` seconds; every ``reorg_every`` blocks, a reorg."""

    def __init__(
        self,
        chain: SimulatedChain,
        block_time: float,
        reorg_every: int | None,
        reorg_depth: int,
        stopping: threading.Event,
    ) -> None:
        super().__init__(name="amp-dev-block-producer", daemon=True)
        self.chain = chain
        self.block_time = block_time
        self.reorg_every = reorg_every
        self.reorg_depth = reorg_depth
        self.stopping = stopping
        self.halt = threading.Event()

    def run(self) -> None:
        mined = 0
        while not self.stopping.wait(self.block_time) and not self.halt.is_set():
            self.chain.mine(1)
            mined += 1
            if self.reorg_every and mined % self.reorg_every == 0:
                event = self.chain.reorg(
                    min(self.reorg_depth, self.chain.head - self.chain.first_block + 1)
                )
                log.info(
                    "reorg: blocks %d..%d replaced (depth %d)",
                    event.fork_height,
                    event.old_head,
                    event.depth,
                )


def _ping_policy(strict: bool) -> list[tuple[str, int]]:
    """gRPC server options for keepalive pings from clients.

    Why lenient by default: amp's Client pings (gRPC keepalive) to notice a dead
    connection while a stream quietly waits for blocks, and amp assumes the Amp server
    answers pings at any rate (docs/architecture.md, "Dead peers"); a gRPC server's own
    default answers the third ping without data within 5 minutes with GOAWAY
    ``too_many_pings``. ``strict`` keeps that default, to try a client against it."""
    if strict:
        return []
    return [("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_ping_strikes", 0)]


class DevServer:
    """A running dev server; use as a context manager or call ``start()``/``stop()``."""

    def __init__(
        self,
        port: int = 0,
        seed: int = 1,
        network: str = "mainnet",
        dataset: str = "eth_firehose",
        start_block: int = 0,
        initial_blocks: int = 100,
        block_time: float | None = None,
        max_interval: int = 1000,
        auth_token: str | None = None,
        *,
        host: str = "127.0.0.1",
        reorg_every: int | None = None,
        reorg_depth: int = 1,
        rows_per_message: int = 65_536,
        keepalive_interval: float = 30.0,
        mean_txs_per_block: int = 10,
        max_concurrent_calls: int = 64,
        strict_pings: bool = False,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535 (0 picks a free port), got {port}")
        if max_interval < 1:
            raise ValueError(f"max_interval must be >= 1 block, got {max_interval}")
        if block_time is not None and block_time <= 0:
            raise ValueError(f"block_time must be > 0 seconds or None, got {block_time}")
        if reorg_every is not None and (reorg_every < 1 or block_time is None):
            raise ValueError("reorg_every needs block_time and must be >= 1 block")
        if reorg_depth < 1:
            raise ValueError(f"reorg_depth must be >= 1, got {reorg_depth}")
        if rows_per_message < 1:
            raise ValueError(f"rows_per_message must be >= 1, got {rows_per_message}")
        if keepalive_interval <= 0:
            raise ValueError(f"keepalive_interval must be > 0 seconds, got {keepalive_interval}")
        self.host = host
        self.port = port
        self.block_time = block_time
        self.reorg_every = reorg_every
        self.reorg_depth = reorg_depth
        self.max_concurrent_calls = max_concurrent_calls
        self.strict_pings = strict_pings
        self.chain = SimulatedChain(
            seed=seed,
            network=network,
            start_block=start_block,
            initial_blocks=initial_blocks,
            mean_txs_per_block=mean_txs_per_block,
        )
        self.faults = Faults()
        self._options = ServiceOptions(
            dataset=dataset,
            max_interval=max_interval,
            rows_per_message=rows_per_message,
            keepalive_seconds=keepalive_interval,
            auth_token=auth_token,
        )
        self._stopping = threading.Event()
        self._server: grpc.Server | None = None
        self._producer: _BlockProducer | None = None

    @property
    def url(self) -> str:
        return f"grpc://{self.host}:{self.port}"

    def start(self) -> DevServer:
        if self._server is not None:
            raise RuntimeError("the dev server is already running")
        self._stopping.clear()
        service = FlightService(self.chain, self.faults, self._options, self._stopping)
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.max_concurrent_calls, thread_name_prefix="amp-dev-rpc"
            ),
            options=[("grpc.so_reuseport", 0), *_ping_policy(self.strict_pings)],
        )
        server.add_generic_rpc_handlers([service.handler()])
        try:
            bound = server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError as exc:
            raise OSError(
                f"cannot listen on {self.host}:{self.port}: {exc}; pick another port or 0"
            ) from exc
        if bound == 0:
            raise OSError(f"cannot listen on {self.host}:{self.port}: the port is in use")
        self.port = bound
        server.start()
        self._server = server
        if self.block_time is not None:
            self._producer = _BlockProducer(
                self.chain, self.block_time, self.reorg_every, self.reorg_depth, self._stopping
            )
            self._producer.start()
        log.info("Amp dev server listening on %s", self.url)
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving: open streams end, new calls are refused."""
        self._stopping.set()
        self.faults.release()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._producer is not None:
            self._producer.join()
            self._producer = None

    def stop_block_production(self) -> None:
        """Stop mining new blocks (and reorgs); the server keeps serving."""
        if self._producer is not None:
            self._producer.halt.set()
            self._producer.join()
            self._producer = None

    def request_stop(self) -> None:
        """Ask ``wait()`` to return; safe in a signal handler (it only sets a flag)."""
        self._stopping.set()

    def wait(self) -> None:
        """Block until ``request_stop()`` or ``stop()`` is called from elsewhere."""
        while not self._stopping.wait(0.5):
            pass

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
