"""What an image costs to keep and a run cost to make: the prices in one place, overridable.

Defaults are us-east-1 list prices (see ``shared/reference/aws-facts.md``); a deployment overrides
any of them with the ``PriceOverrides`` parameter (JSON, the field names below), the CLI with
``--prices``. Snapshot sizes are the volumes' provisioned sizes: EBS snapshots are incremental and
compressed, so the real bill is at most this.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .model import Model


@dataclass(frozen=True)
class Prices:
    snapshot_gb_month: float = 0.05  # EBS snapshot storage, standard tier
    archive_gb_month: float = 0.0125  # EBS snapshot storage, archive tier (90-day minimum)
    inter_region_gb: float = 0.02  # data transfer out of the source Region, per GB copied
    transitions_per_thousand: float = 0.025  # Step Functions Standard
    lambda_requests_per_million: float = 0.20
    lambda_gb_second: float = 0.0000166667  # x86_64


def load_prices(overrides: str | Mapping[str, float] | None) -> Prices:
    """Defaults, with the named fields replaced; an unknown field is an error, not a silent typo."""
    if isinstance(overrides, str):
        given: Mapping[str, Any] = json.loads(overrides) if overrides.strip() else {}
    else:
        given = overrides or {}
    known = {field.name for field in fields(Prices)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"unknown price(s) {unknown}: the prices are {sorted(known)}")
    return replace(Prices(), **{name: float(value) for name, value in given.items()})


class RegionCost(Model):
    region: str
    snapshot_gib: float
    monthly_standard: float
    monthly_archive: float
    copy_transfer: float  # once, for the copy into this Region (0 in the source Region)


class CostEstimate(Model):
    regions: list[RegionCost]
    monthly_standard: float
    monthly_archive: float
    copy_transfer_once: float
    orchestration_once: float | None = None  # what the run itself cost, when known (transitions, Lambda)
    prices: dict[str, float]


def estimate_images(sizes: Mapping[str, float], source_region: str, prices: Prices) -> CostEstimate:
    """Standing storage per Region and the one-time copy transfer, for images of ``sizes`` GiB by Region."""
    regions = [
        RegionCost(
            region=region,
            snapshot_gib=gib,
            monthly_standard=round(gib * prices.snapshot_gb_month, 4),
            monthly_archive=round(gib * prices.archive_gb_month, 4),
            copy_transfer=0.0 if region == source_region else round(gib * prices.inter_region_gb, 4),
        )
        for region, gib in sizes.items()
    ]
    return CostEstimate(
        regions=regions,
        monthly_standard=round(sum(r.monthly_standard for r in regions), 4),
        monthly_archive=round(sum(r.monthly_archive for r in regions), 4),
        copy_transfer_once=round(sum(r.copy_transfer for r in regions), 4),
        prices=asdict(prices),
    )


def orchestration_cost(transitions: int, invocations: int, gb_seconds: float, prices: Prices) -> float:
    return round(
        transitions / 1000 * prices.transitions_per_thousand
        + invocations / 1_000_000 * prices.lambda_requests_per_million
        + gb_seconds * prices.lambda_gb_second,
        6,
    )
