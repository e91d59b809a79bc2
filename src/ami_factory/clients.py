"""The one place boto3 clients come from, typed per service.

Clients use adaptive retries (client-side rate limiting on throttling); the attempt count is a
setting so the local emulator can hand throttling to the state machine's Retry instead. Tests and
callers may inject a factory with :func:`use_client_factory`.

The types come from boto3-stubs, a development dependency: they are imported only for the type
checker, so the Lambda layer does not carry them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import boto3
from botocore.config import Config

from .settings import load_settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_stepfunctions import SFNClient
    from mypy_boto3_sts import STSClient

Service = Literal["dynamodb", "ec2", "events", "kms", "sns", "ssm", "stepfunctions", "sts"]
# A factory makes the client for (service, Region); what it returns is typed by ``client`` below.
ClientFactory = Callable[[Service, str], Any]

_lock = threading.Lock()
_cache: dict[tuple[Service, str], Any] = {}
_factory: ClientFactory | None = None


@dataclass(frozen=True)
class Credentials:
    """A role's temporary credentials (AssumeRole's answer)."""

    access_key_id: str
    secret_access_key: str
    session_token: str


def boto3_client(service: Service, region: str, credentials: Credentials | None = None) -> Any:
    """A new boto3 client, with the retries the settings ask for (the default factory); with
    ``credentials``, acting as the role they belong to."""
    settings = load_settings()
    config = Config(
        retries={"mode": settings.sdk_retry_mode, "total_max_attempts": settings.sdk_max_attempts},
        user_agent_extra="ami-factory",
    )
    if credentials is None:
        return boto3.client(service, region_name=region, config=config)
    return boto3.client(
        service,
        region_name=region,
        config=config,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token,
    )


@overload
def client(service: Literal["dynamodb"], region: str) -> DynamoDBClient: ...
@overload
def client(service: Literal["ec2"], region: str) -> EC2Client: ...
@overload
def client(service: Literal["events"], region: str) -> EventBridgeClient: ...
@overload
def client(service: Literal["kms"], region: str) -> KMSClient: ...
@overload
def client(service: Literal["sns"], region: str) -> SNSClient: ...
@overload
def client(service: Literal["ssm"], region: str) -> SSMClient: ...
@overload
def client(service: Literal["stepfunctions"], region: str) -> SFNClient: ...
@overload
def client(service: Literal["sts"], region: str) -> STSClient: ...
@overload
def client(service: Literal["ec2"], region: str, credentials: Credentials) -> EC2Client: ...
@overload
def client(service: Literal["ssm"], region: str, credentials: Credentials) -> SSMClient: ...
def client(service: Service, region: str, credentials: Credentials | None = None) -> Any:
    """A cached client for ``service`` in ``region`` (cross-Region calls need their own); with
    ``credentials`` (a role assumed in another account), a new one: they expire within the hour."""
    if not region:  # never boto3's default Region: every call says where it goes
        raise ValueError(f"a {service} client needs its Region")
    if credentials is not None:
        return boto3_client(service, region, credentials)
    key = (service, region)
    with _lock:
        if key not in _cache:
            _cache[key] = (_factory or boto3_client)(service, region)
        return _cache[key]


def use_client_factory(factory: ClientFactory | None) -> None:
    """Swap how clients are made (``None`` restores boto3) and forget the cached ones."""
    global _factory
    with _lock:
        _factory = factory
        _cache.clear()
