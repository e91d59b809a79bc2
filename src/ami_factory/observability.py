"""One Powertools Logger, Tracer and Metrics for the whole package: every module logs through them,
so each line is JSON with the function's context and the run's correlation keys, and metrics go out
as CloudWatch embedded metric format in the same log stream (namespace ``AMIFactory``).

The Tracer is made once, when the first handler is made (``ami_factory.handler``, in Lambda's Init):
making it imports the X-Ray SDK and patches botocore, which every traced call needs."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

SERVICE = "ami-factory"
logger = Logger(service=SERVICE)
metrics = Metrics(namespace="AMIFactory", service=SERVICE)


def region_gauge(name: str, region: str, value: float) -> None:
    """A level in one Region (copy slots in use), sent at once with the Region as its dimension: the
    run's metrics share one set of dimensions, and this one needs its own. Only printed (embedded
    metric format), so it cannot fail the step that sends it."""
    with single_metric(name=name, unit=MetricUnit.Count, value=value, namespace="AMIFactory") as metric:
        metric.add_dimension(name="service", value=SERVICE)
        metric.add_dimension(name="Region", value=region)


@cache
def tracer() -> Tracer:
    from aws_lambda_powertools import Tracer

    return Tracer(service=SERVICE)


__all__ = ["MetricUnit", "logger", "metrics", "region_gauge", "tracer"]
