"""The shape every Lambda handler has: parse the step's input, call the domain, return its model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from .observability import logger, metrics, tracer

In = TypeVar("In", bound=BaseModel)
Handler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


def correlation_keys(model: BaseModel) -> dict[str, str]:
    """Execution, instance, clone, image and Region, wherever the step's input carries them."""
    keys: dict[str, str] = {}
    for field, key in (("run_id", "execution"), ("instance_id", "instance"), ("source_region", "region")):
        if isinstance(value := getattr(model, field, None), str):
            keys[key] = value
    for ref in ("image", "seed", "instance", "source_image", "command", "generalize", "clone"):
        if (nested := getattr(model, ref, None)) is not None:
            if hasattr(nested, "image_id"):
                keys["image"] = nested.image_id
            else:  # the clone is named apart from the instance it was made from
                keys["clone" if ref == "clone" else "instance"] = nested.instance_id
            keys["region"] = nested.region
    if (target := getattr(model, "region", None)) is not None and hasattr(target, "name"):
        keys["region"] = target.name
    return keys


def lambda_handler(run: Callable[[dict[str, Any]], BaseModel]) -> Handler:
    """A Lambda handler around ``run``: Powertools logging and tracing, JSON in, JSON out."""

    def traced(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        try:
            result = run(event).model_dump(mode="json")
        finally:
            # Only steps that measured something publish (log_metrics would warn for every other one).
            if metrics.metric_set:
                metrics.flush_metrics()
        logger.info("done", extra={"result": result})
        return result

    wrapped: list[Handler] = []  # traced by the Tracer made at the first call, then kept

    @logger.inject_lambda_context(clear_state=True)
    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        if not wrapped:
            wrapped.append(tracer().capture_lambda_handler(traced))
        return wrapped[0](event, context)

    return handler


def lambda_step(model: type[In], step: Callable[[In], BaseModel]) -> Handler:
    """A workflow step: the input parsed into the step's contract, with correlation keys in every log line."""

    def run(event: dict[str, Any]) -> BaseModel:
        parsed = model.model_validate(event)  # what Powertools' parse does for a dict, without importing it
        logger.append_keys(**correlation_keys(parsed))
        return step(parsed)

    return lambda_handler(run)
