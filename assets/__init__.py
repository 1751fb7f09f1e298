"""Dagster asset definitions: thin wrappers over the domain logic in ``pipeline``."""
