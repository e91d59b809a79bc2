"""The local emulator: the real state machine and the real handlers on emulated AWS (moto).

See ``Emulator`` for the way in from tests and scripts, and ``server`` for the HTTP endpoint that
the AWS CLI and SDKs can use with ``--endpoint-url``.
"""

from .emulator import Emulator, RunResult
from .world import World

__all__ = ["Emulator", "RunResult", "World"]
