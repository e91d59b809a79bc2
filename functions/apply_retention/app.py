from ami_factory.handler import lambda_handler
from ami_factory.request import RetentionInput
from ami_factory.retention import run_retention

handler = lambda_handler(run_retention, clients=("dynamodb", "ec2", "ssm"), models=(RetentionInput,))
