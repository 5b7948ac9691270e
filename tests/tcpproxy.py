"""A real TCP forwarding proxy on 127.0.0.1, for putting network faults between amp and a
service (PostgreSQL, Redis, a Kafka broker, the dev server).

Three kinds of fault, each what a client really meets:

- ``stop()``: every connection closed at both ends, new ones refused (a server down);
  ``start()`` listens again on the same port.
- ``stall()``: a black hole. Every connection, open or new, stays open but nothing moves
  either way (no reset, no FIN: a dead NAT, a failed-over host, a frozen server whose
  kernel still acknowledges); ``resume()`` lets the held bytes flow again.
- ``silence_open()``: the open connections go silent for good while new ones work (a
  NAT mapping or load-balancer flow that died; a client recovers only by reconnecting).
  A client closing a silenced connection is not passed on either: the server's side of
  it stays open until ``stop()``.

``StallClock``, ``retries_telling`` and ``run_through_silence`` make a streaming load's
path go silent after its first committed microbatch and time how long the load takes to
notice (its first retry) and to go on.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kit import free_port


class TcpProxy:
    """127.0.0.1:<port> → target, with the faults above; ``accepted`` counts connections."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        # One gate per connection, set while its bytes may flow; its two pumps wait on it
        # before each read and each write.
        self._gates: list[threading.Event] = []
        self._silenced: list[threading.Event] = []  # gates closed for good
        self._stalled = False
        self.accepted = 0

    @property
    def running(self) -> bool:
        return self._listener is not None

    @property
    def stalled(self) -> bool:
        return self._stalled

    def start(self) -> None:
        assert self._listener is None, "the proxy is already running"
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        self._spawn(self._accept_loop, listener)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="tcp-proxy")
        thread.start()  # before it is listed: stop() joins only started threads
        with self._lock:
            self._threads.append(thread)

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was shut down
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            gate = threading.Event()
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
                self._gates.append(gate)
                self.accepted += 1
                if not self._stalled:
                    gate.set()
            self._spawn(self._pump, client, upstream, gate)
            self._spawn(self._pump, upstream, client, gate)

    def _pump(self, source: socket.socket, sink: socket.socket, gate: threading.Event) -> None:
        try:
            while True:
                gate.wait()
                data = source.recv(65536)
                if not data:
                    break
                gate.wait()  # a chunk read just before a stall is held, not sent
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        """Stop forwarding on every connection, open or new, closing nothing."""
        with self._lock:
            self._stalled = True
            for gate in self._gates:
                gate.clear()

    def resume(self) -> None:
        """Forward again, held bytes first."""
        with self._lock:
            self._stalled = False
            for gate in self._gates:
                gate.set()

    def silence_open(self) -> int:
        """Stop forwarding on the connections open now, for good; new ones flow. Returns
        how many connections were silenced."""
        with self._lock:
            gates, self._gates = self._gates, []
            for gate in gates:
                gate.clear()
            self._silenced.extend(gates)
        return len(gates)

    def stop(self) -> None:
        """Close the listener and every open connection; wait for the threads to end
        (silenced and stalled pumps are woken once their sockets are closed)."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
            gates = self._gates + self._silenced
            self._gates, self._silenced = [], []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for gate in gates:
            gate.set()
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=5)
        alive = [t for t in threads if t.is_alive()]
        assert not alive, f"{len(alive)} proxy thread(s) did not stop"


# How a test makes a proxied path go silent: "stall" (every connection, resumed as soon
# as the client notices) or "silence" (the open connections die, new ones work).
SILENCES = ("stall", "silence")


class StallClock:
    """Makes ``proxy`` go silent (``how``: one of SILENCES) at a moment the test picks,
    and times how long the client takes to notice (the test calls ``noticed()`` from the
    client's first retry)."""

    def __init__(self, proxy: TcpProxy, how: str) -> None:
        assert how in SILENCES, how
        self.proxy = proxy
        self.how = how
        self.silent_at: float | None = None
        self.noticed_at: float | None = None

    def go_silent(self) -> None:
        if self.silent_at is not None:
            return
        self.silent_at = time.monotonic()
        if self.how == "stall":
            self.proxy.stall()
        else:
            assert self.proxy.silence_open() > 0, "no open connection to silence"

    def noticed(self) -> None:
        assert self.silent_at is not None, "the client failed before the path went silent"
        self.noticed_at = time.monotonic()
        if self.how == "stall":
            self.proxy.resume()

    def seconds_to_notice(self) -> float:
        assert self.silent_at is not None, "the path never went silent"
        assert self.noticed_at is not None, "the client never noticed the silence"
        return self.noticed_at - self.silent_at


def assert_noticed_within(clock: StallClock, retries: list[str], low: float, high: float) -> str:
    """Exactly one retry, logged as transient, ``low`` to ``high`` seconds after the path
    went silent (``high`` is loose: the machine is shared); returns its message."""
    assert len(retries) == 1, retries
    elapsed = clock.seconds_to_notice()
    assert low <= elapsed < high, f"the silence was noticed after {elapsed:.2f} s"
    return retries[0]


class _RetryWatch(logging.Handler):
    def __init__(self, clock: StallClock) -> None:
        super().__init__(logging.INFO)
        self.clock = clock
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "for transient error:" in message:
            self.messages.append(message)
            if len(self.messages) == 1:
                self.clock.noticed()


@contextlib.contextmanager
def retries_telling(clock: StallClock) -> Iterator[list[str]]:
    """The messages of the load's retries while the block runs; the first one calls
    ``clock.noticed()``, in the retrying thread, before the retry's backoff."""
    watch = _RetryWatch(clock)
    logger = logging.getLogger("amp.streaming.resilience")
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(watch)
    try:
        yield watch.messages
    finally:
        logger.removeHandler(watch)
        logger.setLevel(previous)


def run_through_silence(run: Any, clock: StallClock, done: Callable[[Any], bool]) -> float:
    """Iterate a streaming load ``run`` (closing it in the end) until ``done(result)``:
    the path goes silent right after its first committed microbatch. Returns the seconds
    from the silence to the next committed microbatch."""
    resumed_after: float | None = None
    try:
        for result in run:
            assert result.success, result.error
            if clock.silent_at is not None and resumed_after is None:
                resumed_after = time.monotonic() - clock.silent_at
            clock.go_silent()  # once
            if done(result):
                break
    finally:
        run.close()
    assert resumed_after is not None, "no microbatch was committed after the silence"
    return resumed_after
