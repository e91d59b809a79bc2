from ami_factory.contracts import ProtectImageInput
from ami_factory.distribution import protect_image
from ami_factory.handler import lambda_step

handler = lambda_step(ProtectImageInput, protect_image, clients=("ec2",))
