from ami_factory.handler import lambda_step
from ami_factory.models import ShareImageInput
from ami_factory.distribution import share_image

handler = lambda_step(ShareImageInput, share_image)
