from ami_factory.contracts import LaunchCheckInput
from ami_factory.distribution import start_launch_check
from ami_factory.handler import lambda_step

handler = lambda_step(LaunchCheckInput, start_launch_check, clients=("dynamodb", "ec2"))
