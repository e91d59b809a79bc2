from ami_factory.handler import lambda_step
from ami_factory.models import LaunchCloneInput
from ami_factory.generalize import launch_clone

handler = lambda_step(LaunchCloneInput, launch_clone)
