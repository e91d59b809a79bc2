"""One Powertools Logger and Tracer for the whole package: every module logs through them, so each
line is JSON with the function's context and the run's correlation keys."""

from aws_lambda_powertools import Logger, Tracer

logger = Logger(service="ami-factory")
tracer = Tracer(service="ami-factory")
