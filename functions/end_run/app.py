from ami_factory.closing import end_runs
from ami_factory.contracts import ExecutionStatusChangeEvent
from ami_factory.handler import lambda_handler

handler = lambda_handler(
    end_runs,
    clients=("dynamodb", "ec2", "events", "sns", "ssm", "stepfunctions", "sts"),
    models=(ExecutionStatusChangeEvent,),
)
