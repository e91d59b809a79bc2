from ami_factory.account_copies import remove_account_copy
from ami_factory.contracts import RemoveAccountCopyInput
from ami_factory.handler import lambda_step

handler = lambda_step(RemoveAccountCopyInput, remove_account_copy, clients=("dynamodb", "ec2", "ssm", "sts"))
