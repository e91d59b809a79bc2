"""Every log line of a step carries the run's correlation keys, whichever step it is."""

from __future__ import annotations

from ami_factory.contracts import CheckCloneInput, CopyImageInput, WatchImageInput, WatchInstanceInput
from ami_factory.handler import correlation_keys


def test_correlation_keys_follow_the_steps_inputs() -> None:
    command = WatchInstanceInput.model_validate(
        {
            "run_id": "run-1",
            "task_token": "t",
            "command": {"command_id": "c-1", "instance_id": "i-0123456789abcdef0", "region": "us-east-1"},
        }
    )
    assert correlation_keys(command) == {"execution": "run-1", "instance": "i-0123456789abcdef0", "region": "us-east-1"}
    image = WatchImageInput.model_validate(
        {"run_id": "run-1", "role": "image", "image": {"region": "eu-west-1", "image_id": "ami-1"}, "task_token": "t"}
    )
    assert correlation_keys(image) == {"execution": "run-1", "image": "ami-1", "region": "eu-west-1"}
    copy = CopyImageInput.model_validate(
        {
            "run_id": "run-1",
            "image_name": "n",
            "description": "d",
            "tags": {},
            "region": {"name": "ap-southeast-2", "is_source": False},
            "source_image": {"region": "us-east-1", "image_id": "ami-1"},
        }
    )
    assert correlation_keys(copy) == {"execution": "run-1", "image": "ami-1", "region": "ap-southeast-2"}
    clone = CheckCloneInput.model_validate(
        {"clone": {"instance_id": "i-0fedcba9876543210", "region": "us-east-1", "state": "pending"}, "max_polls": 3}
    )
    assert correlation_keys(clone) == {"clone": "i-0fedcba9876543210", "region": "us-east-1"}
