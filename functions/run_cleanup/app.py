from ami_factory.handler import lambda_step
from ami_factory.models import Plan
from ami_factory.generalize import run_cleanup

handler = lambda_step(Plan, run_cleanup)
