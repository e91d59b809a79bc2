from ami_factory.contracts import AmiStateChange, AwsEvent, CommandStatusChange, InstanceStateChange
from ami_factory.handler import lambda_handler
from ami_factory.waits import settle_waits

handler = lambda_handler(
    settle_waits,
    clients=("dynamodb", "ec2", "ssm", "stepfunctions"),
    models=(AwsEvent, AmiStateChange, InstanceStateChange, CommandStatusChange),
)
