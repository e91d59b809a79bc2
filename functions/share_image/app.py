from ami_factory.contracts import ShareImageInput
from ami_factory.distribution import share_image
from ami_factory.handler import lambda_step

handler = lambda_step(ShareImageInput, share_image, clients=("dynamodb", "ec2"))
