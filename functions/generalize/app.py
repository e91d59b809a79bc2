from ami_factory.generalize import generalize
from ami_factory.handler import lambda_step
from ami_factory.models import GeneralizeInput

handler = lambda_step(GeneralizeInput, generalize)
