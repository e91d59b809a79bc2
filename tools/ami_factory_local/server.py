"""``ami-factory-local serve``: the emulator on a local port, for the AWS CLI and SDKs.

The app from ``template.yaml`` is deployed into it and a demo instance is launched; the command
prints the state machine ARN and a copy-paste ``aws stepfunctions start-execution`` line.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from moto.server import ThreadedMotoServer

from .emulator import PROJECT_ROOT, Emulator


class EmulatorServer:
    def __init__(self, port: int = 5005, parameters: dict[str, str] | None = None, image_seconds: float = 900) -> None:
        self.port = port
        self.emulator = Emulator(parameters=parameters)
        self.emulator.world.images_take(image_seconds)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.instance_id = ""

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        # The server and the in-process mock share moto's backends: the interpreter and the handlers
        # talk to them in process, the AWS CLI over HTTP.
        self.emulator.start()
        self._server.start()
        self.instance_id = self.emulator.launch_instance(name="demo-web")

    def stop(self) -> None:
        self._server.stop()
        self.emulator.stop()

    def banner(self) -> str:
        request = {"instance_id": self.instance_id, "regions": ["eu-west-1", "ap-southeast-2"]}
        sample = PROJECT_ROOT / "events" / "request-basic.json"
        return "\n".join(
            [
                f"AMI Factory emulator listening on {self.endpoint_url} (Region {self.emulator.region})",
                f"state machine: {self.emulator.state_machine_arn}",
                f"demo instance: {self.instance_id}",
                "",
                "try (any credentials work; the emulator does not check them):",
                "  export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1",
                f"  aws --endpoint-url {self.endpoint_url} stepfunctions start-execution \\",
                f"    --state-machine-arn {self.emulator.state_machine_arn} \\",
                f"    --name demo-1 --input '{json.dumps(request)}'",
                f"  (or --input file://{Path(sample).relative_to(PROJECT_ROOT)} after putting {self.instance_id} in it)",
                f"  aws --endpoint-url {self.endpoint_url} stepfunctions describe-execution --execution-arn <arn from above>",
                "or tag the instance, as on AWS:",
                f"  aws --endpoint-url {self.endpoint_url} ec2 create-tags --resources {self.instance_id} \\",
                "    --tags Key=ami-factory:regions,Value=eu-west-1 Key=ami-factory:create,Value=true",
                "",
                "Ctrl-C stops the emulator.",
            ]
        )

    def serve_forever(self) -> None:
        self.start()
        print(self.banner(), flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
