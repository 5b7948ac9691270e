"""The ``amp`` command: one program, one subcommand per job.

Why thin: each subcommand parses its arguments and calls the public API, so what the
command line can do, a Python user can do the same way.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType


def _add_dev(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = subparsers.add_parser(
        "dev",
        help="run a local Amp-compatible server over a simulated chain",
        description="Serve a simulated EVM chain over Arrow Flight SQL, like a real Amp "
        "server, until SIGINT or SIGTERM.",
    )
    dev.add_argument("--host", default="127.0.0.1", help="address to listen on")
    dev.add_argument("--port", type=int, default=1602, help="port (0 picks a free one)")
    dev.add_argument("--seed", type=int, default=1, help="seed of the simulated chain")
    dev.add_argument("--network", default="mainnet")
    dev.add_argument("--dataset", default="eth_firehose")
    dev.add_argument("--start-block", type=int, default=0, help="number of the first block")
    dev.add_argument("--initial-blocks", type=int, default=100, help="blocks present at start")
    dev.add_argument(
        "--block-time",
        type=float,
        default=None,
        help="seconds between new blocks (none: no new blocks)",
    )
    dev.add_argument("--reorg-every", type=int, default=None, help="reorg every N new blocks")
    dev.add_argument("--reorg-depth", type=int, default=1, help="blocks replaced by each reorg")
    dev.add_argument("--max-interval", type=int, default=1000, help="most blocks per microbatch")
    dev.add_argument(
        "--auth-token", default=None, help="require 'authorization: Bearer TOKEN' on every call"
    )
    dev.set_defaults(run=_run_dev)


def _run_dev(args: argparse.Namespace) -> int:
    from amp.devserver import DevServer

    server = DevServer(
        port=args.port,
        seed=args.seed,
        network=args.network,
        dataset=args.dataset,
        start_block=args.start_block,
        initial_blocks=args.initial_blocks,
        block_time=args.block_time,
        max_interval=args.max_interval,
        auth_token=args.auth_token,
        host=args.host,
        reorg_every=args.reorg_every,
        reorg_depth=args.reorg_depth,
    )

    def request_stop(signum: int, frame: FrameType | None) -> None:
        server.request_stop()

    server.start()
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(f"Amp dev server listening on {server.url}", flush=True)
    server.wait()
    server.stop()
    print("Amp dev server stopped", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amp", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_dev(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args))
    except (ValueError, OSError) as exc:
        print(f"amp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
