"""Running a parallel load's partitions on a Dask cluster (the ``dask`` extra).

``ParallelConfig(executor=...)`` with a scheduler address or a ``distributed.Client``
makes each bounded partition one task (``task.run_partition``) that loads it through the
same loop as a worker thread, in a worker process anywhere on the cluster. The
submitting process keeps the plan in the destination, submits what is unfinished,
resubmits a partition whose worker process died, and streams live blocks itself.
Nothing here imports ``distributed`` at import time: without the extra, only asking for
a cluster executor fails (with the extra's name). See docs/scale-out.md.
"""

from __future__ import annotations

from typing import Any

from amp.errors import ConfigError


def distributed_module() -> Any:
    """``distributed``, or a ConfigError naming the extra that installs it."""
    try:
        import distributed
    except ImportError:
        raise ConfigError(
            "a Dask executor needs the 'distributed' package: pip install 'amp-python[dask]'"
        ) from None
    return distributed
