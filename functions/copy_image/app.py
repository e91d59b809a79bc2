from ami_factory.handler import lambda_step
from ami_factory.models import CopyImageInput
from ami_factory.distribution import copy_image

handler = lambda_step(CopyImageInput, copy_image)
