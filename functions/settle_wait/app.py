from ami_factory.handler import lambda_handler
from ami_factory.waits import settle_waits

handler = lambda_handler(settle_waits, clients=("dynamodb", "ec2", "ssm", "stepfunctions"))
