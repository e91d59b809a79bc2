from ami_factory.contracts import Plan
from ami_factory.generalize import create_seed_image
from ami_factory.handler import lambda_step

handler = lambda_step(Plan, create_seed_image, clients=("dynamodb", "ec2"))
