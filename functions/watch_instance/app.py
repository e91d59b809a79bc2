from ami_factory.contracts import WatchInstanceInput
from ami_factory.handler import lambda_step
from ami_factory.waits import watch_instance

handler = lambda_step(WatchInstanceInput, watch_instance, clients=("dynamodb", "ec2", "ssm", "stepfunctions"))
