from ami_factory.contracts import CreateImageInput
from ami_factory.handler import lambda_step
from ami_factory.workflow import create_image

handler = lambda_step(CreateImageInput, create_image, clients=("dynamodb", "ec2"))
