"""``ami_factory_cli doctor --stack-name NAME``: is a deployed stack and its account ready for a first
run? Each check reads (never changes anything) and, when it fails, says what to fix and the command
that fixes it.

- parameters: settings that contradict each other (a default Region outside AllowedRegions, a key
  for a Region the stack may not copy to, public sharing asked of tags but off, a CloudTrail trigger
  that nobody may pull);
- public sharing: image block public access in each Region the stack may share publicly in;
- key policies: each KmsKeyIds key lets every allowed share target use it;
- event forwarding: each Region the stack may copy to has its rule, enabled, sending to the home bus;
- scheduled instances: each instance tagged for the schedule whose tags need SSM (clean-up,
  generalize) is managed by SSM and online.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

import boto3
from botocore.exceptions import ClientError

from ami_factory.aws import error_text, tags_of
from ami_factory.forwarding import rule_name
from ami_factory.request import ShareTargets
from ami_factory.rules import principals_without_key_access

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_ssm import SSMClient

GENERALIZE_MODES = ("generalize", "generalize-in-place")


@dataclass
class Finding:
    check: str
    problems: list[str] = field(default_factory=list)  # each says what is wrong, then how to fix it
    passed: str = ""  # what was found right, when nothing is wrong

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Stack:
    name: str
    region: str
    parameters: dict[str, str]

    def listed(self, key: str) -> list[str]:
        return [item.strip() for item in self.parameters.get(key, "").split(",") if item.strip()]


class Doctor:
    def __init__(self, session: boto3.session.Session, endpoint_url: str | None, stack: Stack) -> None:
        self._session = session
        self._endpoint_url = endpoint_url
        self.stack = stack

    def ec2(self, region: str | None = None) -> EC2Client:
        return self._session.client("ec2", region_name=region or self.stack.region, endpoint_url=self._endpoint_url)

    def kms(self, region: str) -> KMSClient:
        return self._session.client("kms", region_name=region, endpoint_url=self._endpoint_url)

    def events(self, region: str) -> EventBridgeClient:
        return self._session.client("events", region_name=region, endpoint_url=self._endpoint_url)

    def ssm(self) -> SSMClient:
        return self._session.client("ssm", region_name=self.stack.region, endpoint_url=self._endpoint_url)

    def checks(self) -> list[Callable[[], Finding]]:
        return [
            self.parameters,
            self.public_sharing,
            self.key_policies,
            self.event_forwarding,
            self.scheduled_instances,
        ]

    # --- the checks ---------------------------------------------------------------------------

    def parameters(self) -> Finding:
        stack, finding = self.stack, Finding("parameters")
        allowed = set(stack.listed("AllowedRegions"))
        if allowed:
            outside = sorted(set(stack.listed("DefaultRegions")) - allowed - {stack.region})
            if outside:
                finding.problems.append(
                    f"DefaultRegions names {outside}, outside AllowedRegions {sorted(allowed)}, so a request that "
                    f"names no Regions is refused: {_redeploy(stack, 'AllowedRegions or DefaultRegions')}"
                )
            keyed = sorted({arn.split(":")[3] for arn in stack.listed("KmsKeyIds")} - allowed - {stack.region})
            if keyed:
                finding.problems.append(
                    f"KmsKeyIds has keys for {keyed}, where AllowedRegions {sorted(allowed)} lets no run copy: "
                    f"{_redeploy(stack, 'KmsKeyIds or AllowedRegions')}"
                )
        privileged = stack.listed("TagPrivilegedSettings")
        if "share-public" in privileged and stack.parameters.get("AllowPublicSharing") != "true":
            finding.problems.append(
                "TagPrivilegedSettings opens share-public to tags, but AllowPublicSharing is false, so every such "
                f"tag is refused: {_redeploy(stack, 'TagPrivilegedSettings or AllowPublicSharing')}"
            )
        if stack.parameters.get("TriggerSource") == "cloudtrail" and not stack.listed("AllowedTriggerPrincipals"):
            finding.problems.append(
                "TriggerSource is cloudtrail and AllowedTriggerPrincipals is empty, so no tag starts a run: "
                f"{_redeploy(stack, 'AllowedTriggerPrincipals')}"
            )
        finding.passed = "no settings contradict each other"
        return finding

    def public_sharing(self) -> Finding:
        finding = Finding("public sharing")
        if self.stack.parameters.get("AllowPublicSharing") != "true":
            finding.passed = "public sharing is off (AllowPublicSharing=false): nothing to check"
            return finding
        regions = self._copy_regions(enabled_if_unlisted=False)
        for region in regions:
            state = self.ec2(region).get_image_block_public_access_state()["ImageBlockPublicAccessState"]
            if state != "unblocked":
                finding.problems.append(
                    f"image block public access is {state} in {region}, so a public run fails there: "
                    f"aws ec2 disable-image-block-public-access --region {region} (if public images are intended)"
                )
        finding.passed = f"public images can be made in {regions}"
        return finding

    def key_policies(self) -> Finding:
        finding = Finding("key policies")
        keys = self.stack.listed("KmsKeyIds")
        share = ShareTargets(
            accounts=self.stack.listed("AllowedShareAccounts"),
            organizations=self.stack.listed("AllowedShareOrganizations"),
            organizational_units=self.stack.listed("AllowedShareOUs"),
        )
        if not keys or not share.describe():
            finding.passed = "no customer managed key, or no share target: nothing to check"
            return finding
        for key in keys:
            kms = self.kms(key.split(":")[3])
            try:
                policy = json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
            except ClientError as error:  # a key that is gone, or one these credentials may not read
                finding.problems.append(
                    f"key {key} cannot be read ({error_text(error)}): check the ARN in KmsKeyIds, and that you "
                    f"may kms:GetKeyPolicy it (aws kms describe-key --key-id {key})"
                )
                continue
            grants = kms.get_paginator("list_grants").paginate(KeyId=key)
            grantees = [str(grant.get("GranteePrincipal", "")) for page in grants for grant in page["Grants"]]
            missing = principals_without_key_access(policy, grantees, share)
            if missing:
                finding.problems.append(
                    f"key {key} does not let {missing} use it, so they would see images encrypted with it but could "
                    f"not launch them: allow kms:Decrypt, kms:DescribeKey, kms:CreateGrant, kms:ReEncrypt* and "
                    f"kms:GenerateDataKey* to them in the key policy (aws kms put-key-policy --key-id {key} "
                    f"--policy-name default --policy file://policy.json), or create grants"
                )
        finding.passed = f"{len(keys)} key(s) let every allowed share target use them"
        return finding

    def event_forwarding(self) -> Finding:
        finding = Finding("event forwarding")
        stack = self.stack
        name = rule_name(f"{stack.name}-{stack.region}-ami-events")
        home_bus = f"arn:aws:events:{stack.region}:{self._account()}:event-bus/default"
        regions = [region for region in self._copy_regions(enabled_if_unlisted=True) if region != stack.region]
        for region in regions:
            events = self.events(region)
            try:
                rule = events.describe_rule(Name=name)
            except events.exceptions.ResourceNotFoundException:
                finding.problems.append(
                    f"{region} has no rule {name}, so copies there end only at the fallback sweep "
                    f"(EventFallbackMinutes), not on EC2's event: update the stack (sam deploy) to make it"
                )
                continue
            targets = [target["Arn"] for target in events.list_targets_by_rule(Rule=name)["Targets"]]
            if rule.get("State") != "ENABLED" or home_bus not in targets:
                finding.problems.append(
                    f"rule {name} in {region} is {rule.get('State')} with targets {targets}; it must be ENABLED and "
                    f"send to {home_bus}: aws events enable-rule --name {name} --region {region}, or update the stack"
                )
        finding.passed = f"{len(regions)} Region(s) forward EC2's AMI events to {stack.region}"
        return finding

    def scheduled_instances(self) -> Finding:
        finding = Finding("scheduled instances")
        key = self.stack.parameters.get("ScheduleTagKey") or "ami-factory:schedule"
        ec2, ssm = self.ec2(), self.ssm()
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": "tag-key", "Values": [key]},
                {"Name": "instance-state-name", "Values": ["running", "stopped"]},
            ]
        )
        scheduled = [
            instance
            for page in pages
            for reservation in page["Reservations"]
            for instance in reservation["Instances"]
            if tags_of(instance).get(key, "").lower() == "true"
        ]
        needing = [instance for instance in scheduled if _needs_ssm(tags_of(instance))]
        for instance in needing:
            instance_id = instance["InstanceId"]
            found = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [instance_id]}])
            info = found["InstanceInformationList"]
            if not info or info[0].get("PingStatus") != "Online":
                status = "not registered with SSM" if not info else f"SSM ping status {info[0].get('PingStatus')}"
                finding.problems.append(
                    f"instance {instance_id} is tagged for the schedule with a clean-up or generalize, and is "
                    f"{status}, so its scheduled runs fail: install and start the SSM agent and give its instance "
                    f"profile AmazonSSMManagedInstanceCore (aws ssm describe-instance-information --filters "
                    f"Key=InstanceIds,Values={instance_id} shows it once it is managed)"
                )
        finding.passed = f"{len(scheduled)} scheduled instance(s), {len(needing)} needing SSM, all managed"
        return finding

    # --- what the checks share ----------------------------------------------------------------

    def _copy_regions(self, enabled_if_unlisted: bool) -> list[str]:
        """Where the stack's runs may put images: AllowedRegions and the stack's own; with none listed,
        every enabled Region (or only the defaults, where a check of every Region would say little)."""
        listed = self.stack.listed("AllowedRegions")
        if not listed:
            if enabled_if_unlisted:
                described = self.ec2().describe_regions(
                    Filters=[{"Name": "opt-in-status", "Values": ["opt-in-not-required", "opted-in"]}]
                )
                return sorted(region["RegionName"] for region in described["Regions"])
            listed = self.stack.listed("DefaultRegions")
        return sorted({self.stack.region, *listed})

    def _account(self) -> str:
        sts = self._session.client("sts", region_name=self.stack.region, endpoint_url=self._endpoint_url)
        return str(sts.get_caller_identity()["Account"])


def _needs_ssm(tags: dict[str, str]) -> bool:
    return tags.get("ami-factory:cleanup", "").lower() == "true" or tags.get("ami-factory:mode") in GENERALIZE_MODES


def _redeploy(stack: Stack, what: str) -> str:
    return f"change {what} (sam deploy --stack-name {stack.name} --parameter-overrides ...)"


def load_stack(session: boto3.session.Session, endpoint_url: str | None, name: str) -> Stack:
    described = session.client("cloudformation", endpoint_url=endpoint_url).describe_stacks(StackName=name)
    found = described["Stacks"][0]
    parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in found.get("Parameters", [])}
    return Stack(name=found["StackName"], region=session.region_name or "us-east-1", parameters=parameters)


def doctor(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run every check, print each (with its fixes), exit 1 when any needs attention."""
    session = boto3.session.Session(region_name=args.region)
    examiner = Doctor(session, args.endpoint_url, load_stack(session, args.endpoint_url, args.stack_name))
    print(f"AMI Factory doctor: stack {examiner.stack.name} in {examiner.stack.region} (read-only)", file=out)
    findings = [check() for check in examiner.checks()]
    for finding in findings:
        if finding.ok:
            print(f"  ok    {finding.check}: {finding.passed}", file=out)
        for problem in finding.problems:
            print(f"  FIX   {finding.check}: {problem}", file=out)
    failing = sum(not finding.ok for finding in findings)
    print(f"{failing} of {len(findings)} checks need attention" if failing else "ready for a first run", file=out)
    return 1 if failing else 0
