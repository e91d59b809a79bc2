"""The shape every Lambda handler has: parse the step's input, call the domain, return its model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

logger = Logger(service="ami-factory")
tracer = Tracer(service="ami-factory")

In = TypeVar("In", bound=BaseModel)
Handler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


def correlation_keys(model: BaseModel) -> dict[str, str]:
    """Execution, instance, image and Region, wherever the step's input carries them."""
    keys: dict[str, str] = {}
    for field, key in (("run_id", "execution"), ("instance_id", "instance"), ("source_region", "region")):
        if isinstance(value := getattr(model, field, None), str):
            keys[key] = value
    for ref in ("image", "instance", "source_image"):
        if (nested := getattr(model, ref, None)) is not None:
            keys.update({"image": nested.image_id} if hasattr(nested, "image_id") else {"instance": nested.instance_id})
            keys["region"] = nested.region
    if (target := getattr(model, "region", None)) is not None and hasattr(target, "name"):
        keys["region"] = target.name
    return keys


def lambda_step(model: type[In], step: Callable[[In], BaseModel]) -> Handler:
    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        parsed = parse(event=event, model=model)
        logger.append_keys(**correlation_keys(parsed))
        result = step(parsed)
        logger.info("step done", extra={"result": result.model_dump(mode="json")})
        return result.model_dump(mode="json")

    return handler
