from ami_factory.contracts import EndLaunchCheckInput
from ami_factory.distribution import end_launch_check
from ami_factory.handler import lambda_step

handler = lambda_step(EndLaunchCheckInput, end_launch_check, clients=("dynamodb", "ec2"))
