from ami_factory.forwarding import CustomResourceRequest, forward_ami_events
from ami_factory.handler import lambda_handler

handler = lambda_handler(forward_ami_events, clients=("ec2", "events"), models=(CustomResourceRequest,))
