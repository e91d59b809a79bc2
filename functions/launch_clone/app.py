from ami_factory.contracts import LaunchCloneInput
from ami_factory.generalize import launch_clone
from ami_factory.handler import lambda_step

handler = lambda_step(LaunchCloneInput, launch_clone, clients=("dynamodb", "ec2"))
