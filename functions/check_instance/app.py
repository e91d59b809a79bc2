from ami_factory.contracts import CheckInstanceInput
from ami_factory.handler import lambda_step
from ami_factory.workflow import check_instance

handler = lambda_step(CheckInstanceInput, check_instance)
