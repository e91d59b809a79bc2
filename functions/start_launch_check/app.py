from ami_factory.handler import lambda_step
from ami_factory.models import LaunchCheckInput
from ami_factory.distribution import start_launch_check

handler = lambda_step(LaunchCheckInput, start_launch_check)
