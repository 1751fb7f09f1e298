"""The ``gradient-billing-sync`` command line."""

from pipeline.cli.main import main

__all__ = ["main"]
