from ami_factory.generalize import check_command
from ami_factory.handler import lambda_step
from ami_factory.models import CheckCommandInput

handler = lambda_step(CheckCommandInput, check_command)
