"""Forwarding EC2's AMI events to the home Region, created and removed with the stack.

A copy settles in its destination Region, and EC2 sends ``EC2 AMI State Change`` only there. A
CloudFormation stack lives in one Region, so its custom resource (``AmiEventForwarding``) puts a rule
in each other Region the stack may copy to (``AllowedRegions``; when that is empty any Region may be
asked for, so every Region enabled in the account) that sends those events to the home Region's
default bus, where ``ImageStateRule`` hands them to SettleWait. A stack update that changes the
Regions adds and removes rules to match; deleting the stack removes them all. A copy into a Region
without a rule still completes: its wait ends at the fallback sweep (EventFallbackMinutes) instead of
on the event. A Region added to ``AllowedRegions`` gets its rule at that stack update; with it empty,
a Region enabled later gets one at the next update of this resource.
"""

from __future__ import annotations

import hashlib
import urllib.request
from typing import Any, Literal

from pydantic import Field

from .aws import Ec2, EventRules
from .contracts import Contract
from .model import Model
from .observability import logger
from .settings import load_settings

RULE_SUFFIX = "-ami-events"
MAX_RULE_NAME = 64  # EventBridge's limit; a stack name alone may be 128 characters


def rule_name(asked: str) -> str:
    """The rule's name: as asked (the stack's name and Region, then ``-ami-events``), or, when that is
    longer than EventBridge allows, shortened with a hash of the whole, so two long stack names that
    share a beginning still get two rules. The suffix stays (the forwarding role trusts only it)."""
    if len(asked) <= MAX_RULE_NAME:
        return asked
    digest = hashlib.sha256(asked.encode()).hexdigest()[:8]
    keep = MAX_RULE_NAME - len(RULE_SUFFIX) - len(digest) - 1
    return f"{asked.removesuffix(RULE_SUFFIX)[:keep]}-{digest}{RULE_SUFFIX}"


AMI_STATE_PATTERN: dict[str, Any] = {
    "source": ["aws.ec2"],
    "detail-type": ["EC2 AMI State Change"],
    "detail": {"State": ["available", "failed", "deregistered", "disabled"]},
}


class ForwardingProperties(Contract):
    Regions: str = ""  # comma-separated; empty: every Region enabled in the account
    RuleName: str
    TargetBusArn: str
    RoleArn: str

    def regions(self) -> set[str]:
        home = load_settings().region
        named = {region for region in self.Regions.split(",") if region}
        return (named or set(Ec2(home).enabled_regions())) - {home}


class CustomResourceRequest(Contract):
    RequestType: Literal["Create", "Update", "Delete"]
    ResponseURL: str
    StackId: str
    RequestId: str
    LogicalResourceId: str
    PhysicalResourceId: str = ""
    ResourceProperties: ForwardingProperties
    OldResourceProperties: ForwardingProperties | None = None


class CustomResourceResponse(Model):
    Status: Literal["SUCCESS", "FAILED"]
    Reason: str = ""
    PhysicalResourceId: str
    StackId: str
    RequestId: str
    LogicalResourceId: str
    Data: dict[str, str] = Field(default_factory=dict)


def forward_ami_events(raw: dict[str, Any]) -> CustomResourceResponse:
    """CloudFormation's request for the forwarding rules: make them match the Regions asked for, then
    answer CloudFormation (a failure answers FAILED with the reason, so the stack rolls back instead
    of waiting an hour)."""
    request = CustomResourceRequest.model_validate(raw)
    wanted = request.ResourceProperties
    name = rule_name(wanted.RuleName)
    status: Literal["SUCCESS", "FAILED"] = "SUCCESS"
    reason = ""
    regions: set[str] = set()
    try:
        regions = wanted.regions()
        old = request.OldResourceProperties
        if request.RequestType == "Delete":
            # Wherever a rule of this name may be (Regions asked for, and every Region enabled now): a
            # Region that cannot be reached any more must not hold up the stack's deletion.
            _remove(name, regions | set(Ec2(load_settings().region).enabled_regions()) - {load_settings().region})
        else:
            if old is not None:  # an update: the Regions no longer asked for lose their rule
                _remove(rule_name(old.RuleName), old.regions() - regions)
            for region in sorted(regions):
                EventRules(region).forward(
                    name,
                    AMI_STATE_PATTERN,
                    wanted.TargetBusArn,
                    wanted.RoleArn,
                    "AMI Factory: sends EC2's AMI state changes to the stack's Region, where copy waits end on them.",
                )
    except Exception as error:  # CloudFormation must hear of any failure, or it waits for an answer
        logger.exception("the forwarding rules could not be made to match")
        status, reason = "FAILED", f"{type(error).__name__}: {error}"
    response = CustomResourceResponse(
        Status=status,
        Reason=reason,
        PhysicalResourceId=request.PhysicalResourceId or f"{name}-forwarding",
        StackId=request.StackId,
        RequestId=request.RequestId,
        LogicalResourceId=request.LogicalResourceId,
        Data={"Regions": ",".join(sorted(regions))},
    )
    _answer(request.ResponseURL, response)
    return response


def _remove(rule: str, regions: set[str]) -> None:
    """Each Region's rule, if it is there; a Region that refuses (turned off since, a permission
    missing there) is logged and left, so the others are still removed."""
    for region in sorted(regions):
        try:
            EventRules(region).remove(rule)
        except Exception:  # any failure: the other Regions' rules must still go
            logger.exception("the forwarding rule could not be removed", extra={"rule": rule, "region": region})


def _answer(url: str, response: CustomResourceResponse) -> None:
    """CloudFormation reads the answer from the presigned S3 URL it gave (a PUT without a content type)."""
    body = response.model_dump_json().encode()
    put = urllib.request.Request(url, data=body, method="PUT", headers={"Content-Type": ""})
    with urllib.request.urlopen(put, timeout=30) as answer:
        answer.read()
