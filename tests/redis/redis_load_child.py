"""The process the crash test kills: a streaming load of the logs into Redis, with
checkpoints and idempotency, running until it is killed (its log goes to stderr at INFO;
the test waits for ``Loading checkpoint for connection=<name>``).

    python tests/redis/redis_load_child.py --server grpc://127.0.0.1:1602 \\
        --table t --connection c --structure hash
"""

from __future__ import annotations

import argparse
import logging
import sys

from amp.client import Client

QUERY = "SELECT * FROM eth_firehose.logs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--connection", required=True)
    parser.add_argument("--structure", default="hash", choices=["hash", "stream"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--db", type=int, default=9)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    client = Client(args.server)
    client.configure_connection(
        args.connection,
        "redis",
        {
            "host": args.host,
            "port": args.port,
            "db": args.db,
            "data_structure": args.structure,
            "checkpoint": {"enabled": True},
            "idempotency": {"enabled": True},
        },
    )
    for result in client.sql(QUERY).load(args.connection, args.table, stream=True):
        if not result.success:
            sys.exit(f"the load failed: {result.error}")


if __name__ == "__main__":
    main()
