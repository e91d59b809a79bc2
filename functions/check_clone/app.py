from ami_factory.contracts import CheckCloneInput
from ami_factory.generalize import check_clone
from ami_factory.handler import lambda_step

handler = lambda_step(CheckCloneInput, check_clone, clients=("ec2", "ssm"))
