from ami_factory.contracts import ResolveRequestInput
from ami_factory.handler import lambda_step
from ami_factory.preflight import resolve_request

handler = lambda_step(ResolveRequestInput, resolve_request, clients=("dynamodb", "ec2", "kms", "ssm", "stepfunctions"))
