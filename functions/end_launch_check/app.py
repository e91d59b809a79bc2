from ami_factory.contracts import CheckLaunchInput
from ami_factory.distribution import end_launch_check
from ami_factory.handler import lambda_step

handler = lambda_step(CheckLaunchInput, end_launch_check)
