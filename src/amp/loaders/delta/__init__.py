"""The Delta Lake destination (``loader='deltalake'``, the ``delta`` extra): ``loader``
makes each unit one Delta commit; ``state`` and ``store`` keep amp's checkpoints and
processed ranges inside those commits; ``predicate``, ``claim``, ``types`` and
``config`` are its rules; ``extra`` stands in when delta-rs is not installed."""
