from ami_factory.contracts import RestoreInstanceInput
from ami_factory.handler import lambda_step
from ami_factory.workflow import restore_instance

handler = lambda_step(RestoreInstanceInput, restore_instance, clients=("dynamodb", "ec2"))
