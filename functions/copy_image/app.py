from ami_factory.distribution import copy_image
from ami_factory.handler import lambda_step
from ami_factory.models import CopyImageInput

handler = lambda_step(CopyImageInput, copy_image)
