from ami_factory.contracts import CheckGeneralizeInput
from ami_factory.generalize import check_generalize
from ami_factory.handler import lambda_step

handler = lambda_step(CheckGeneralizeInput, check_generalize)
