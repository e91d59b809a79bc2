from ami_factory.generalize import run_cleanup
from ami_factory.handler import lambda_step
from ami_factory.models import Plan

handler = lambda_step(Plan, run_cleanup)
