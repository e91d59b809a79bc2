from ami_factory.generalize import launch_clone
from ami_factory.handler import lambda_step
from ami_factory.models import LaunchCloneInput

handler = lambda_step(LaunchCloneInput, launch_clone)
