from ami_factory.handler import lambda_step
from ami_factory.models import PublishParameterInput
from ami_factory.distribution import publish_parameter

handler = lambda_step(PublishParameterInput, publish_parameter)
