from ami_factory.contracts import CheckImageInput
from ami_factory.handler import lambda_step
from ami_factory.workflow import check_image

handler = lambda_step(CheckImageInput, check_image)
