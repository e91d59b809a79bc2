"""EC2's request limits, which moto does not have: per-Region token buckets and the concurrent-copy quota.

EC2 throttles each account and Region with token buckets: a call takes a token from its action's
bucket, an empty bucket refuses it (``RequestLimitExceeded``), and each bucket refills at a steady
rate up to its size. CopyImage has a quota besides: at most 50 copies in flight into one Region, at
most 25 of them from one source Region (``ResourceLimitExceeded``). The numbers are
``shared/reference/aws-facts.md``'s; time is the virtual clock's, so a bucket refills as fast as the
run's waits move time on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moto.ec2.exceptions import EC2ClientError

COPIES_PER_DESTINATION = 50
COPIES_PER_SOURCE = 25


@dataclass(frozen=True)
class BucketSize:
    capacity: float
    refill_per_second: float


DESCRIBE = BucketSize(100, 20)
UNFILTERED_DESCRIBE = BucketSize(50, 10)
MUTATING = BucketSize(50, 5)
# The actions with a bucket of their own; every other non-describe call shares MUTATING.
OWN_BUCKETS = {
    "CopyImage": BucketSize(100, 1),
    "ModifyImageAttribute": BucketSize(100, 5),
    "ModifySnapshotAttribute": BucketSize(100, 5),
    "DeregisterImage": BucketSize(100, 5),
    "DeleteSnapshot": BucketSize(100, 5),
    "CreateTags": BucketSize(100, 10),
    "RunInstances": BucketSize(5, 2),
}
NON_MUTATING_PREFIXES = ("Describe", "Get", "List", "Search")
UNFILTERED_CAPABLE = ("DescribeInstances", "DescribeSnapshots")


def bucket_of(operation: str, params: dict[str, Any]) -> tuple[str, BucketSize]:
    """The bucket an EC2 call draws from: its own, the describe bucket (the smaller one for a
    DescribeInstances or DescribeSnapshots with neither ids nor filters), or the shared mutating one."""
    if operation in OWN_BUCKETS:
        return operation, OWN_BUCKETS[operation]
    if operation.startswith(NON_MUTATING_PREFIXES):
        narrowed = any(key.startswith(("InstanceId", "SnapshotId", "Filter", "OwnerId")) for key in params)
        if operation in UNFILTERED_CAPABLE and not narrowed:
            return "unfiltered-describe", UNFILTERED_DESCRIBE
        return "describe", DESCRIBE
    return "mutating", MUTATING


@dataclass
class TokenBucket:
    size: BucketSize
    tokens: float
    filled_at: float

    def take(self, now: float) -> bool:
        # A thread behind the bucket's time (a parallel branch that waited less) adds nothing.
        if now > self.filled_at:
            self.tokens = min(self.size.capacity, self.tokens + (now - self.filled_at) * self.size.refill_per_second)
            self.filled_at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class Ec2Limits:
    """The account's buckets, by Region and bucket name, created full on first use."""

    buckets: dict[tuple[str, str], TokenBucket] = field(default_factory=dict)
    refused: int = 0

    def admit(self, region: str, operation: str, params: dict[str, Any], now: float) -> EC2ClientError | None:
        name, size = bucket_of(operation, params)
        bucket = self.buckets.setdefault((region, name), TokenBucket(size, size.capacity, now))
        if bucket.take(now):
            return None
        self.refused += 1
        return EC2ClientError("RequestLimitExceeded", "Request limit exceeded.")


def copy_quota_refusal(destination: str, source: str, in_flight: list[str]) -> EC2ClientError | None:
    """``in_flight``: the source Regions of the copies into ``destination`` not finished yet."""
    if len(in_flight) >= COPIES_PER_DESTINATION:
        return EC2ClientError(
            "ResourceLimitExceeded",
            f"You have reached the maximum of {COPIES_PER_DESTINATION} concurrent AMI copies into {destination}",
        )
    if in_flight.count(source) >= COPIES_PER_SOURCE:
        return EC2ClientError(
            "ResourceLimitExceeded",
            f"You have reached the maximum of {COPIES_PER_SOURCE} concurrent AMI copies from {source} into {destination}",
        )
    return None
