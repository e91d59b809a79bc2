from ami_factory.distribution import share_image
from ami_factory.handler import lambda_step
from ami_factory.models import ShareImageInput

handler = lambda_step(ShareImageInput, share_image)
