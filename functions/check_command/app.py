from ami_factory.handler import lambda_step
from ami_factory.models import CheckCommandInput
from ami_factory.generalize import check_command

handler = lambda_step(CheckCommandInput, check_command)
