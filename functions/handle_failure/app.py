from ami_factory.contracts import HandleFailureInput
from ami_factory.handler import lambda_step
from ami_factory.workflow import handle_failure

handler = lambda_step(HandleFailureInput, handle_failure, clients=("dynamodb", "ec2", "events", "sns", "ssm"))
