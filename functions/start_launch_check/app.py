from ami_factory.distribution import start_launch_check
from ami_factory.handler import lambda_step
from ami_factory.models import LaunchCheckInput

handler = lambda_step(LaunchCheckInput, start_launch_check)
