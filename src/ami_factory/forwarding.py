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

import urllib.request
from typing import Any, Literal

from pydantic import BaseModel, Field

from .aws import Ec2, EventRules
from .contracts import Contract
from .observability import logger
from .settings import load_settings

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


class CustomResourceResponse(BaseModel):
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
    status: Literal["SUCCESS", "FAILED"] = "SUCCESS"
    reason = ""
    regions: set[str] = set()
    try:
        regions = wanted.regions()
        old = request.OldResourceProperties
        if request.RequestType == "Delete":
            _remove(wanted.RuleName, regions)
        else:
            if old is not None:  # an update: the Regions no longer asked for lose their rule
                _remove(old.RuleName, old.regions() - regions)
            for region in sorted(regions):
                EventRules(region).forward(
                    wanted.RuleName,
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
        PhysicalResourceId=request.PhysicalResourceId or f"{wanted.RuleName}-forwarding",
        StackId=request.StackId,
        RequestId=request.RequestId,
        LogicalResourceId=request.LogicalResourceId,
        Data={"Regions": ",".join(sorted(regions))},
    )
    _answer(request.ResponseURL, response)
    return response


def _remove(rule: str, regions: set[str]) -> None:
    for region in sorted(regions):
        EventRules(region).remove(rule)


def _answer(url: str, response: CustomResourceResponse) -> None:
    """CloudFormation reads the answer from the presigned S3 URL it gave (a PUT without a content type)."""
    body = response.model_dump_json().encode()
    put = urllib.request.Request(url, data=body, method="PUT", headers={"Content-Type": ""})
    with urllib.request.urlopen(put, timeout=30) as answer:
        answer.read()
