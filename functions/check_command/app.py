from ami_factory.contracts import CheckCommandInput
from ami_factory.generalize import check_command
from ami_factory.handler import lambda_step

handler = lambda_step(CheckCommandInput, check_command)
