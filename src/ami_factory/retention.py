"""The scheduled clean-up: per image family and Region, keep the newest N and/or the images younger
than D days, and never delete one that is in use or protected.

Only the images the run ledger records as a family's published images are judged, with the
retention their run's validated request asked for: never an image found by tag, never a setting
read from a tag. An image goes by being disabled, then deregistered with its snapshots deleted.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .aws import Ec2, Ssm
from .contracts import RetentionAction, RetentionDecision, RetentionReport
from .ledger import FamilyImage, Ledger
from .observability import logger
from .request import RetentionInput
from .rules import parameter_name
from .settings import Settings, load_settings

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import ImageTypeDef


def _within(timestamp: str, days: int, now: datetime) -> bool:
    """Whether EC2's ``timestamp`` (ISO 8601, trailing Z) is less than ``days`` before ``now``."""
    # At the boundary instant either answer is right: `<` or `<=` is not a decision.
    return now - datetime.fromisoformat(timestamp) < timedelta(days=days)  # pragma: no mutate


def _policy(newest: FamilyImage, settings: Settings) -> tuple[int, int]:
    """(keep newest N, keep younger than D days): the family's newest image's run asked for them (its
    validated request, recorded in the ledger), else the deployment's."""
    return (
        newest.keep_newest or settings.retention_keep_newest,
        newest.max_age_days or settings.retention_max_age_days,
    )


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


def apply_retention(event: RetentionInput) -> RetentionReport:
    """Judge every family's published images the ledger records, per Region. (What runs that ended
    badly left is the janitor's: ``closing``.)"""
    ledger = Ledger()
    now = datetime.now(UTC)
    report = RetentionReport(dry_run=event.dry_run)
    recorded = ledger.family_images()
    regions = sorted(set(event.regions) if event.regions else {image.region for image in recorded})
    for region in regions:
        _judge_region(region, [image for image in recorded if image.region == region], event.dry_run, now, report)
    logger.info("retention", extra={"report": report.model_dump(mode="json")})
    return report


def _judge_region(
    region: str, recorded: list[FamilyImage], dry_run: bool, now: datetime, report: RetentionReport
) -> None:
    settings = load_settings()
    ec2 = Ec2(region)
    described = ec2.own_images([image.image_id for image in recorded])
    families: dict[str, list[tuple[FamilyImage, ImageTypeDef]]] = defaultdict(list)
    for record in recorded:
        found = described.get(record.image_id)
        if found is not None and found.get("State") in ("available", "disabled"):
            families[record.family].append((record, found))
    for family, images in sorted(families.items()):
        images.sort(key=lambda pair: pair[1]["CreationDate"], reverse=True)
        keep_newest, max_age_days = _policy(images[0][0], settings)
        if not keep_newest and not max_age_days:
            report.kept += len(images)
            continue
        expired = [
            pair
            for index, pair in enumerate(images)
            if not (keep_newest and index < keep_newest)
            and not (max_age_days and _within(pair[1]["CreationDate"], max_age_days, now))
        ]
        report.kept += len(images) - len(expired)
        if not expired:
            continue
        references = ec2.image_references([pair[1]["ImageId"] for pair in expired])
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
        for record, image in expired:
            reason = _why_kept(image, latest, references, settings, now)
            if reason:
                report.kept += 1
                report.decisions.append(
                    RetentionDecision(
                        region=region, image_id=image["ImageId"], family=family, action="skipped", reason=reason
                    )
                )
                continue
            if not dry_run:
                made = Ledger().made_as(record.run_id, region, image["ImageId"], "image")
                if made is not None and made.fast_launch:  # EC2's pre-provisioned snapshots go first
                    ec2.turn_off_fast_launch(image["ImageId"])
                ec2.disable_image(image["ImageId"])
                ec2.delete_image(image)
                Ledger().family_image_removed(record)
            action: RetentionAction = "would delete" if dry_run else "deleted"
            report.decisions.append(
                RetentionDecision(region=region, image_id=image["ImageId"], family=family, action=action, reason=rule)
            )


def run_retention(event: dict[str, Any]) -> RetentionReport:
    """The scheduled entry point: the schedule's input is a RetentionInput (``{}``: apply, all Regions)."""
    return apply_retention(RetentionInput.model_validate(event or {}))
