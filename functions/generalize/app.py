from ami_factory.contracts import GeneralizeInput
from ami_factory.generalize import generalize
from ami_factory.handler import lambda_step

handler = lambda_step(GeneralizeInput, generalize, clients=("dynamodb", "ssm"))
