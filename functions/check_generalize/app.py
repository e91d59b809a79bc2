from ami_factory.generalize import check_generalize
from ami_factory.handler import lambda_step
from ami_factory.models import CheckGeneralizeInput

handler = lambda_step(CheckGeneralizeInput, check_generalize)
