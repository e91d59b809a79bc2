from ami_factory.distribution import check_launch
from ami_factory.handler import lambda_step
from ami_factory.models import CheckLaunchInput

handler = lambda_step(CheckLaunchInput, check_launch)
