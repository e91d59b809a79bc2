from ami_factory.account_copies import deliver_to_account
from ami_factory.contracts import DeliverToAccountInput
from ami_factory.handler import lambda_step

handler = lambda_step(DeliverToAccountInput, deliver_to_account, clients=("dynamodb", "ec2", "ssm", "sts"))
