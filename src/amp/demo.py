"""``make demo``: the main job on the embedded defaults, with no external services.

For now it starts the dev server in-process with new blocks every second and a reorg
now and then, streams ``eth_firehose.logs`` for a few seconds with a bare Flight
client, and prints each microbatch's block range as it completes.
"""

from __future__ import annotations

import json
import time

import pyarrow.flight as flight

from amp.devserver import DevServer
from amp.flight.protowire import encode_statement_query

DEMO_SECONDS = 8.0


def main() -> None:
    with DevServer(
        port=0, seed=1, initial_blocks=2_000, block_time=0.5, reorg_every=5, reorg_depth=2
    ) as server:
        print(f"Amp dev server listening on {server.url}")
        client = flight.connect(server.url)
        descriptor = flight.FlightDescriptor.for_command(
            encode_statement_query("SELECT * FROM eth_firehose.logs SETTINGS stream = true")
        )
        info = client.get_flight_info(descriptor)
        reader = client.do_get(info.endpoints[0].ticket)
        deadline = time.monotonic() + DEMO_SECONDS
        rows = 0
        last_end = -1
        while time.monotonic() < deadline:
            chunk = reader.read_chunk()
            rows += chunk.data.num_rows
            metadata = json.loads(chunk.app_metadata.to_pybytes())
            if metadata["ranges_complete"]:
                numbers = metadata["ranges"][0]["numbers"]
                note = "  <- reorg" if numbers["start"] <= last_end else ""
                print(f"blocks {numbers['start']:>6}..{numbers['end']:<6} rows so far {rows}{note}")
                last_end = numbers["end"]
        reader.cancel()
        reorgs = len(server.chain.reorgs)
        print(f"streamed {rows} rows; chain head {server.chain.head}, reorgs {reorgs}")


if __name__ == "__main__":
    main()
