from ami_factory.contracts import Plan
from ami_factory.generalize import run_cleanup
from ami_factory.handler import lambda_step

handler = lambda_step(Plan, run_cleanup, clients=("ssm",))
