from ami_factory.distribution import protect_image
from ami_factory.handler import lambda_step
from ami_factory.models import ProtectImageInput

handler = lambda_step(ProtectImageInput, protect_image)
