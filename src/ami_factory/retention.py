"""The scheduled clean-up: per image family and Region, keep the newest N and/or the images younger
than D days, and never delete one that is in use or protected.

Only images tagged ``ami-factory:managed=true`` are considered (tags decide, never names); a run's
own scaffolding (seed, capture) is the run's to remove. An image goes by being disabled, then
deregistered with its snapshots deleted.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError

from .aws import Ec2, Ssm, error_code, tags_of
from .contracts import RetentionAction, RetentionDecision, RetentionReport
from .observability import logger
from .request import RetentionInput
from .rules import KEEP_NEWEST_TAG, MAX_AGE_TAG, ROLE_TAG, TAG_PREFIX, parameter_name
from .settings import Settings, load_settings

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import ImageTypeDef


def _within(timestamp: str, days: int, now: datetime) -> bool:
    """Whether EC2's ``timestamp`` (ISO 8601, trailing Z) is less than ``days`` before ``now``."""
    # At the boundary instant either answer is right: `<` or `<=` is not a decision.
    return now - datetime.fromisoformat(timestamp) < timedelta(days=days)  # pragma: no mutate


def _policy(newest: ImageTypeDef, settings: Settings) -> tuple[int, int]:
    """(keep newest N, keep younger than D days) from the family's newest image, else the deployment's."""
    tags = tags_of(newest)
    keep_newest = int(tags.get(KEEP_NEWEST_TAG) or settings.retention_keep_newest)
    return keep_newest, int(tags.get(MAX_AGE_TAG) or settings.retention_max_age_days)


def _why_kept(
    image: ImageTypeDef,
    latest: tuple[str, str | None],
    references: dict[str, list[str]],
    settings: Settings,
    now: datetime,
) -> str | None:
    """The reason an expired image must stay, if there is one (``latest``: the parameter and its value)."""
    protection = image.get("DeregistrationProtection")
    if protection and protection.startswith("enabled"):
        return f"deregistration protection is {protection}"
    if latest[1] == image["ImageId"]:
        return f"{latest[0]} points to it"
    if image["ImageId"] in references:
        return "in use by " + ", ".join(references[image["ImageId"]])
    launched = image.get("LastLaunchedTime")
    if launched and _within(launched, settings.retention_recent_launch_days, now):
        return f"launched {launched}, within RetentionRecentLaunchDays ({settings.retention_recent_launch_days})"
    return None


def retention_regions(settings: Settings) -> list[str]:
    """Where images may be: the AllowedRegions (and the stack's), else every Region of the partition."""
    if settings.allowed_regions:
        return sorted({settings.region, *settings.allowed_regions})
    partition = boto3.session.Session().get_partition_for_region(settings.region)
    return sorted(boto3.session.Session().get_available_regions("ec2", partition_name=partition))


def apply_retention(event: RetentionInput) -> RetentionReport:
    settings = load_settings()
    regions = event.regions or retention_regions(settings)
    now = datetime.now(UTC)
    report = RetentionReport(dry_run=event.dry_run)
    for region in regions:
        ec2 = Ec2(region)
        families: dict[str, list[ImageTypeDef]] = defaultdict(list)
        try:
            managed = ec2.managed_images()
        except ClientError as error:  # a Region not enabled for the account (opt-in) holds no images
            logger.warning("skipping %s: %s", region, error_code(error))
            continue
        for image in managed:
            tags = tags_of(image)
            if tags.get(ROLE_TAG) or image.get("State") not in ("available", "disabled"):
                continue  # scaffolding, or an image a run is still making
            families[tags.get(f"{TAG_PREFIX}family", "")].append(image)
        for family, images in sorted(families.items()):
            images.sort(key=lambda image: image["CreationDate"], reverse=True)
            keep_newest, max_age_days = _policy(images[0], settings)
            if not keep_newest and not max_age_days:
                report.kept += len(images)
                continue
            expired = [
                image
                for index, image in enumerate(images)
                if not (keep_newest and index < keep_newest)
                and not (max_age_days and _within(image["CreationDate"], max_age_days, now))
            ]
            report.kept += len(images) - len(expired)
            if not expired:
                continue
            references = ec2.image_references([image["ImageId"] for image in expired])
            latest_name = parameter_name(settings.parameter_prefix, family)
            latest = (latest_name, Ssm(region).parameter_value(latest_name))
            rule = " and ".join(
                part
                for part in (
                    f"not among the newest {keep_newest}" if keep_newest else "",
                    f"older than {max_age_days} days" if max_age_days else "",
                )
                if part
            )
            for image in expired:
                reason = _why_kept(image, latest, references, settings, now)
                if reason:
                    report.kept += 1
                    report.decisions.append(
                        RetentionDecision(
                            region=region, image_id=image["ImageId"], family=family, action="skipped", reason=reason
                        )
                    )
                    continue
                if not event.dry_run:
                    ec2.disable_image(image["ImageId"])
                    ec2.delete_image(image)
                action: RetentionAction = "would delete" if event.dry_run else "deleted"
                report.decisions.append(
                    RetentionDecision(
                        region=region, image_id=image["ImageId"], family=family, action=action, reason=rule
                    )
                )
    logger.info("retention", extra={"report": report.model_dump(mode="json")})
    return report


def run_retention(event: dict[str, Any]) -> RetentionReport:
    """The scheduled entry point: the schedule's input is a RetentionInput (``{}``: apply, all Regions)."""
    return apply_retention(RetentionInput.model_validate(event or {}))
