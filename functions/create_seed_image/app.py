from ami_factory.handler import lambda_step
from ami_factory.models import Plan
from ami_factory.generalize import create_seed_image

handler = lambda_step(Plan, create_seed_image)
