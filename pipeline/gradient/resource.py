"""Dagster resource that builds the run's Gradient client."""

from __future__ import annotations

import dagster as dg
import httpx
from pydantic import Field

from pipeline.gradient.client import DEFAULT_BASE_URL, GradientClient


class GradientResource(dg.ConfigurableResource):
    """Gradient connection settings; ``client()`` gives one client for the run.

    Deployments pass ``vendor_api_key=dg.EnvVar("GRADIENT_VENDOR_API_KEY")`` so Dagster only
    ever shows the variable's name, never the key.
    """

    base_url: str = Field(
        default=DEFAULT_BASE_URL, description="Gradient API base URL (the emulator's in tests)."
    )
    vendor_api_key: str = Field(
        description="The vendor's Gradient API key; pass dg.EnvVar('GRADIENT_VENDOR_API_KEY').",
        repr=False,
    )
    max_requests_per_second: float = Field(
        default=100.0, description="Requests per second for the whole vendor (Gradient: 100)."
    )
    timeout_seconds: float = Field(default=30.0, description="Per-request timeout.")
    max_attempts: int = Field(
        default=6, description="Attempts per call, first included, on 429 / 5xx / network errors."
    )
    max_concurrency: int = Field(default=32, description="Requests in flight at most.")
    backoff_initial_seconds: float = Field(
        default=0.5, description="Backoff window of the first retry (full jitter, doubling)."
    )
    backoff_max_seconds: float = Field(default=30.0, description="Cap of the backoff window.")

    def client(self, transport: httpx.AsyncBaseTransport | None = None) -> GradientClient:
        """A new client; use as ``async with resource.client() as client``, once per run."""
        return GradientClient(
            base_url=self.base_url,
            vendor_api_key=self.vendor_api_key,
            max_requests_per_second=self.max_requests_per_second,
            timeout_seconds=self.timeout_seconds,
            max_attempts=self.max_attempts,
            backoff_initial_seconds=self.backoff_initial_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
            max_concurrency=self.max_concurrency,
            transport=transport,
        )
