from ami_factory.generalize import check_clone
from ami_factory.handler import lambda_step
from ami_factory.models import CheckCloneInput

handler = lambda_step(CheckCloneInput, check_clone)
