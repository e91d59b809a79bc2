"""The events AWS sends about what the world does, on the virtual clock.

EC2 sends ``EC2 AMI State Change`` when an image settles (available, failed) or is deregistered,
in the image's own Region, a few seconds after the change; ``EC2 Instance State-change
Notification`` when an instance stops; Systems Manager ``EC2 Command Status-change Notification``
when a command ends (not when sysprep's shutdown cuts its agent off: then it never reports). The world schedules each event when it
makes the change (a new image's settle time is known when it is created); the emulator delivers an
event when a waiting task's virtual time reaches it (``Emulator`` patches the interpreter's callback
wait), through the Region's rules, so forwarding rules and the home Region's rules see it as on AWS.

EventBridge delivers AWS's events at least once and on a best-effort basis: a test can ask for the
next events of a kind to be lost (never delivered) or duplicated (delivered twice, the same id).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

AMI_STATE_CHANGE = "EC2 AMI State Change"
INSTANCE_STATE_CHANGE = "EC2 Instance State-change Notification"
COMMAND_STATUS_CHANGE = "EC2 Command Status-change Notification"
DELIVERY_SECONDS = 5.0  # EC2's events reach EventBridge seconds after the change


@dataclass
class ScheduledEvent:
    at: float  # virtual time of delivery
    region: str
    resource_id: str
    event: dict[str, Any]
    copies: int = 1  # 0: lost; 2: duplicated
    delivered: bool = False


@dataclass
class _Fault:
    detail_type: str
    copies: int
    times: int
    region: str | None


@dataclass
class EventSchedule:
    account_id: str
    scheduled: list[ScheduledEvent] = field(default_factory=list)
    _faults: list[_Fault] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def lose(self, detail_type: str, times: int, region: str | None = None) -> None:
        """The next ``times`` events of ``detail_type`` (in ``region``, or anywhere) are never delivered."""
        with self._lock:
            self._faults.append(_Fault(detail_type, 0, times, region))

    def duplicate(self, detail_type: str, times: int, region: str | None = None) -> None:
        """The next ``times`` events of ``detail_type`` (in ``region``, or anywhere) are delivered twice."""
        with self._lock:
            self._faults.append(_Fault(detail_type, 2, times, region))

    def image_state_changed(self, region: str, image_id: str, state: str, at: float, reason: str = "") -> None:
        detail = {"ImageId": image_id, "State": state, "ErrorMessage": reason, "RequestId": str(uuid.uuid4())}
        resource = f"arn:aws:ec2:{region}::image/{image_id}"
        self._schedule(region, image_id, AMI_STATE_CHANGE, "aws.ec2", detail, at + DELIVERY_SECONDS, resource)

    def instance_state_changed(self, region: str, instance_id: str, state: str, at: float) -> None:
        detail = {"instance-id": instance_id, "state": state}
        resource = f"arn:aws:ec2:{region}:{self.account_id}:instance/{instance_id}"
        self._schedule(region, instance_id, INSTANCE_STATE_CHANGE, "aws.ec2", detail, at + DELIVERY_SECONDS, resource)

    def command_status_changed(self, region: str, command_id: str, instance_id: str, status: str, at: float) -> None:
        detail = {
            "command-id": command_id,
            "status": status,
            "instance-ids": [instance_id],
            "requested-date-time": datetime.fromtimestamp(at, UTC).isoformat(),
        }
        resource = f"arn:aws:ec2:{region}:{self.account_id}:instance/{instance_id}"
        self._schedule(region, command_id, COMMAND_STATUS_CHANGE, "aws.ssm", detail, at + DELIVERY_SECONDS, resource)

    def next_for(self, resource_ids: list[str], after: float, until: float) -> ScheduledEvent | None:
        """The first event about any of ``resource_ids`` not delivered yet, due after ``after`` and by
        ``until`` (an event due before a wait began was delivered then, to no one waiting)."""
        with self._lock:
            due = [
                scheduled
                for scheduled in self.scheduled
                if scheduled.resource_id in resource_ids and not scheduled.delivered and after < scheduled.at <= until
            ]
            return min(due, key=lambda scheduled: scheduled.at) if due else None

    def take(self, scheduled: ScheduledEvent) -> bool:
        """Mark the event delivered; False if another thread delivered it first."""
        with self._lock:
            if scheduled.delivered:
                return False
            scheduled.delivered = True
            return True

    def _schedule(
        self,
        region: str,
        resource_id: str,
        detail_type: str,
        source: str,
        detail: dict[str, Any],
        at: float,
        resource_arn: str,
    ) -> None:
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": detail_type,
            "source": source,
            "account": self.account_id,
            "time": datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": region,
            "resources": [resource_arn],
            "detail": detail,
        }
        with self._lock:
            self.scheduled.append(ScheduledEvent(at, region, resource_id, event, self._copies(detail_type, region)))

    def _copies(self, detail_type: str, region: str) -> int:
        for fault in self._faults:
            if fault.times > 0 and fault.detail_type == detail_type and fault.region in (None, region):
                fault.times -= 1
                return fault.copies
        return 1
