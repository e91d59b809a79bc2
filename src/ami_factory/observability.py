"""One Powertools Logger, Tracer and Metrics for the whole package: every module logs through them,
so each line is JSON with the function's context and the run's correlation keys, and metrics go out
as CloudWatch embedded metric format in the same log stream (namespace ``AMIFactory``)."""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger(service="ami-factory")
tracer = Tracer(service="ami-factory")
metrics = Metrics(namespace="AMIFactory", service="ami-factory")

__all__ = ["MetricUnit", "logger", "metrics", "tracer"]
