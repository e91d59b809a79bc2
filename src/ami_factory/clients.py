"""The one place boto3 clients come from.

Clients use adaptive retries (client-side rate limiting on throttling); the attempt count is a
setting so the local emulator can hand throttling to the state machine's Retry instead. Tests and
callers may inject a factory with :func:`use_client_factory`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

from .settings import load_settings

ClientFactory = Callable[[str, str], Any]

_lock = threading.Lock()
_cache: dict[tuple[str, str], Any] = {}
_factory: ClientFactory | None = None


def _default_factory(service: str, region: str) -> Any:
    settings = load_settings()
    config = Config(
        retries={"mode": settings.sdk_retry_mode, "total_max_attempts": settings.sdk_max_attempts},
        user_agent_extra="ami-factory",
    )
    return boto3.client(service, region_name=region, config=config)


def client(service: str, region: str) -> Any:
    """A cached client for ``service`` in ``region`` (cross-Region calls need their own)."""
    key = (service, region)
    with _lock:
        if key not in _cache:
            _cache[key] = (_factory or _default_factory)(service, region)
        return _cache[key]


def use_client_factory(factory: ClientFactory | None) -> None:
    """Swap how clients are made (``None`` restores boto3) and forget the cached ones."""
    global _factory
    with _lock:
        _factory = factory
        _cache.clear()
