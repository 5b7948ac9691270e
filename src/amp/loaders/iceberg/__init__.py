"""The Apache Iceberg destination (``loader='iceberg'``, the ``iceberg`` extra):
``loader`` makes each unit one catalog commit; ``state`` and ``store`` keep amp's
checkpoints (table properties) and processed ranges (snapshot summaries); ``claims``,
``types``, ``config`` and ``errors`` are its rules. pyiceberg is imported only when a
table is opened."""
