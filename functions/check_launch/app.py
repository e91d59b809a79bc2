from ami_factory.contracts import CheckLaunchInput
from ami_factory.distribution import check_launch
from ami_factory.handler import lambda_step

handler = lambda_step(CheckLaunchInput, check_launch, clients=("ec2",))
