from ami_factory.approval import await_approval
from ami_factory.contracts import AwaitApprovalInput
from ami_factory.handler import lambda_step

handler = lambda_step(AwaitApprovalInput, await_approval, clients=("dynamodb", "events", "sns", "stepfunctions"))
