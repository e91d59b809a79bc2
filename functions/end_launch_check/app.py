from ami_factory.distribution import end_launch_check
from ami_factory.handler import lambda_step
from ami_factory.models import CheckLaunchInput

handler = lambda_step(CheckLaunchInput, end_launch_check)
