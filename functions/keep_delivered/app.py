from ami_factory.contracts import FinalizeInput
from ami_factory.handler import lambda_step
from ami_factory.workflow import kept_delivered

handler = lambda_step(FinalizeInput, kept_delivered, clients=("dynamodb",))
