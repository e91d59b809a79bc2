from ami_factory.distribution import publish_parameter
from ami_factory.handler import lambda_step
from ami_factory.models import PublishParameterInput

handler = lambda_step(PublishParameterInput, publish_parameter)
