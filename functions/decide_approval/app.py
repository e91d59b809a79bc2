from ami_factory.approval import decide_approval
from ami_factory.contracts import DecideApprovalInput
from ami_factory.handler import lambda_step

handler = lambda_step(DecideApprovalInput, decide_approval, clients=("dynamodb", "stepfunctions"))
