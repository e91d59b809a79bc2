from ami_factory.contracts import FinalizeInput
from ami_factory.handler import lambda_step
from ami_factory.workflow import finalize

handler = lambda_step(
    FinalizeInput, finalize, clients=("dynamodb", "ec2", "events", "sns", "ssm", "stepfunctions", "sts")
)
