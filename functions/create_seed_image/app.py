from ami_factory.generalize import create_seed_image
from ami_factory.handler import lambda_step
from ami_factory.models import Plan

handler = lambda_step(Plan, create_seed_image)
