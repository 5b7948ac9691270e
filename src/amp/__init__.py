"""amp: stream SQL query results from an Amp server into databases and brokers.

Rows arrive exactly once, through server outages, destination outages, rate limits,
crashes, restarts and blockchain reorganizations.
"""

from amp.version import package_version

__version__ = package_version()
