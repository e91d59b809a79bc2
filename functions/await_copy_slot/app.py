from ami_factory.contracts import AwaitCopySlotInput
from ami_factory.copy_slots import await_copy_slot
from ami_factory.handler import lambda_step

handler = lambda_step(AwaitCopySlotInput, await_copy_slot, clients=("dynamodb", "stepfunctions"))
