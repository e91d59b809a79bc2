from ami_factory.contracts import WatchImageInput
from ami_factory.handler import lambda_step
from ami_factory.waits import watch_image

handler = lambda_step(WatchImageInput, watch_image, clients=("dynamodb", "ec2", "stepfunctions"))
