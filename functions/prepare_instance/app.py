from ami_factory.contracts import Plan
from ami_factory.handler import lambda_step
from ami_factory.workflow import prepare_instance

handler = lambda_step(Plan, prepare_instance, clients=("dynamodb", "ec2"))
