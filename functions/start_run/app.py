from ami_factory.handler import lambda_handler
from ami_factory.request import ImagingRequest
from ami_factory.triggers import CloudTrailCreateTags, ScheduledFiring, TagChangeEvent, start_runs

handler = lambda_handler(
    start_runs,
    clients=("dynamodb", "ec2", "stepfunctions"),
    models=(TagChangeEvent, CloudTrailCreateTags, ScheduledFiring, ImagingRequest),
)
