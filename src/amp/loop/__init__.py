"""The load loop: one stream of one load, from server events to destination commits.

Layer: above the loaders and the vocabulary (``amp.streaming``), below the client and
the CLI. Nothing below imports it.
"""

from amp.loop.batch import batch_load
from amp.loop.delivery import Delivery
from amp.loop.grouping import CommitGrouping
from amp.loop.streaming import StreamingLoad

__all__ = ["CommitGrouping", "Delivery", "StreamingLoad", "batch_load"]
