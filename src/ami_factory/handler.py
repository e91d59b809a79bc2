"""The shape every Lambda handler has: parse the step's input, call the domain, return its model.

A handler is made when Lambda imports its module, in the Init phase, and makes there what its calls
need: the Tracer (it patches botocore), the models its calls parse, and the clients of the services
its step calls, in the function's Region (a client in another Region, or with another account's
credentials, is made in the call, from the service model Init loaded). On-demand Lambda runs Init
on a full vCPU; a call runs on the function's share of one (1,769 MB earn one vCPU-second per
second, so 256 MB earn 0.145), so work a call needs anyway, left to the first call, could cost it up
to about seven times as long (docs/benchmarks.md, "Cold start").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from .clients import Service, client
from .observability import logger, metrics, tracer
from .settings import load_settings

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


def lambda_handler(
    run: Callable[[dict[str, Any]], BaseModel],
    clients: tuple[Service, ...] = (),
    models: tuple[type[BaseModel], ...] = (),
) -> Handler:
    """A Lambda handler around ``run``: Powertools logging and tracing, JSON in, JSON out. Made now:
    the validators of ``models`` (what ``run`` parses) and the clients of ``clients`` (the services
    ``run`` calls), in the function's Region."""

    def traced(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        try:
            result = run(event).model_dump(mode="json")
        finally:
            # Only steps that measured something publish (log_metrics would warn for every other one).
            if metrics.metric_set:
                metrics.flush_metrics()
        logger.info("done", extra={"result": result})
        return result

    traced_handler = tracer().capture_lambda_handler(traced)
    for model in models:  # the package's models build their validators at first use (ami_factory.model)
        model.model_rebuild()
    region = load_settings().region
    for service in clients:  # loading a service's model is most of a client's making: EC2's, 140 ms
        client(service, region)
    handler: Handler = logger.inject_lambda_context(clear_state=True)(traced_handler)
    handler.clients = clients  # type: ignore[attr-defined]  # the emulator holds each call to them
    return handler


def lambda_step(model: type[In], step: Callable[[In], BaseModel], clients: tuple[Service, ...] = ()) -> Handler:
    """A workflow step: the input parsed into the step's contract (its validator built now), with
    correlation keys in every log line."""

    def run(event: dict[str, Any]) -> BaseModel:
        parsed = model.model_validate(event)  # what Powertools' parse does for a dict, without importing it
        logger.append_keys(**correlation_keys(parsed))
        return step(parsed)

    return lambda_handler(run, clients, models=(model,))
