"""amp: stream SQL query results from an Amp server into databases and brokers.

Rows arrive exactly once, through server outages, destination outages, rate limits,
crashes, restarts and blockchain reorganizations.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("amp-python")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"
