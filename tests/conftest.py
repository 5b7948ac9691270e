"""Shared test fixtures. The ``amp_devserver`` fixture comes from amp's pytest plugin."""
