from ami_factory.handler import lambda_handler
from ami_factory.triggers import start_runs

handler = lambda_handler(start_runs, clients=("dynamodb", "ec2", "stepfunctions"))
