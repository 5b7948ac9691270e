"""The package imports and the dev server answers a batch query over Flight."""

import pyarrow.flight as flight

from amp.devserver import DevServer
from amp.flight.protowire import encode_statement_query


def test_batch_query_returns_every_canonical_log(amp_devserver: DevServer) -> None:
    client = flight.connect(amp_devserver.url)
    info = client.get_flight_info(
        flight.FlightDescriptor.for_command(
            encode_statement_query("SELECT * FROM eth_firehose.logs")
        )
    )
    table = client.do_get(info.endpoints[0].ticket).read_all()
    assert table.sort_by([("block_num", "ascending"), ("log_index", "ascending")]).equals(
        amp_devserver.chain.canonical_table("logs").sort_by(
            [("block_num", "ascending"), ("log_index", "ascending")]
        )
    )
