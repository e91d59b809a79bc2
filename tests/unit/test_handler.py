"""Every log line of a step carries the run's correlation keys, whichever step it is."""

from __future__ import annotations

from typing import Any

import pytest

from ami_factory.clients import use_client_factory
from ami_factory.contracts import CheckCloneInput, Contract, CopyImageInput, WatchImageInput, WatchInstanceInput
from ami_factory.handler import correlation_keys, lambda_step
from ami_factory.observability import tracer
from ami_factory_local.runtime import LambdaContext


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


class Probe(Contract):
    value: int


def test_a_step_handler_makes_at_init_what_its_calls_need(monkeypatch: pytest.MonkeyPatch) -> None:
    """Making the handler (Lambda's Init, on a full vCPU) makes the Tracer, the step's input model and
    its clients in the function's Region; the call (on a 256 MB function's share of a vCPU) makes none."""
    made: list[tuple[str, str]] = []

    def factory(service: str, region: str) -> Any:
        made.append((service, region))
        return object()

    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    tracer.cache_clear()
    use_client_factory(factory)
    try:
        handler = lambda_step(Probe, lambda probe: Probe(value=probe.value + 1), clients=("dynamodb", "ec2"))
        assert made == [("dynamodb", "eu-west-1"), ("ec2", "eu-west-1")]
        assert Probe.__pydantic_complete__, "the input model's validator is built"
        assert tracer.cache_info().currsize == 1, "the Tracer is made (and botocore patched, in Lambda)"
        assert handler({"value": 1}, LambdaContext("probe", "arn:aws:lambda:eu-west-1:1:function:probe", 256)) == {
            "value": 2
        }
        assert len(made) == 2, "the call made no client"
    finally:
        use_client_factory(None)
