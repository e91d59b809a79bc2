"""``ami-factory-local serve``: the emulator on a local port, for the AWS CLI and SDKs.

The app from ``template.yaml`` is deployed into it with the world every sample request in
``events/`` needs (``samples.py``), so each one runs as written; the command prints the state
machine ARN and copy-paste commands with the real ids.
"""

from __future__ import annotations

import threading

from moto.server import ThreadedMotoServer

from .emulator import Emulator
from .samples import INSTANCE_ID, provision, sample_requests


class EmulatorServer:
    def __init__(self, port: int = 5005, parameters: dict[str, str] | None = None, image_seconds: float = 900) -> None:
        self.port = port
        self.emulator = Emulator(parameters=parameters)
        self.emulator.world.images_take(image_seconds)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.instance_id = INSTANCE_ID  # the one every sample names

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        # The server and the in-process mock share moto's backends: the interpreter and the handlers
        # talk to them in process, the AWS CLI over HTTP.
        self.emulator.start()
        self._server.start()
        provision(self.emulator)

    def stop(self) -> None:
        self._server.stop()
        self.emulator.stop()

    def banner(self) -> str:
        aws = f"aws --endpoint-url {self.endpoint_url}"
        arn = self.emulator.state_machine_arn
        samples = [path.name for path in sample_requests()]
        return "\n".join(
            [
                f"AMI Factory emulator listening on {self.endpoint_url} (Region {self.emulator.region})",
                f"state machine: {arn}",
                f"sample instance: {self.instance_id} (Windows, managed by SSM, two data volumes: every sample names it)",
                "",
                "try (any credentials work; the emulator does not check them):",
                "  export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1",
                f"  {aws} stepfunctions start-execution --state-machine-arn {arn} \\",
                f"    --name {self.instance_id}-basic-1 --input file://events/request-basic.json",
                f"  {aws} stepfunctions describe-execution --execution-arn <the executionArn it printed>",
                f"every sample works as written (one run per instance at a time): {', '.join(samples)}",
                "or with the AMI Factory CLI, which follows the run and prints the result:",
                f"  PYTHONPATH=src:tools .venv/bin/python -m ami_factory_cli run --endpoint-url {self.endpoint_url} \\",
                f"    --state-machine-arn {arn} --request events/request-encrypted.json --instance-id {self.instance_id}",
                "or tag the instance, as on AWS:",
                f"  {aws} ec2 create-tags --resources {self.instance_id} \\",
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
