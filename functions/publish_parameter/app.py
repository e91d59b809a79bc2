from ami_factory.contracts import PublishParameterInput
from ami_factory.distribution import publish_parameter
from ami_factory.handler import lambda_step

handler = lambda_step(PublishParameterInput, publish_parameter, clients=("dynamodb", "ec2", "ssm"))
