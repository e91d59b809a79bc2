from ami_factory.contracts import CopyImageInput
from ami_factory.distribution import copy_image
from ami_factory.handler import lambda_step

handler = lambda_step(CopyImageInput, copy_image, clients=("dynamodb", "ec2", "stepfunctions"))
