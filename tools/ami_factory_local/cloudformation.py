"""What CloudFormation does for a custom resource, for the emulator's deployments.

CloudFormation invokes the resource's function (its ServiceToken) with a Create, Update or Delete
request carrying a presigned S3 URL, and waits for the function to PUT its answer there. The
emulator gives a URL on a local HTTP server that keeps the answers; a FAILED answer, or none, fails
the deployment as it fails a stack.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class CustomResourceAnswers:
    def __init__(self) -> None:
        self.answers: dict[str, dict[str, Any]] = {}  # request id -> the function's answer
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the answer server is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/answers"

    @contextmanager
    def running(self) -> Iterator[CustomResourceAnswers]:
        answers = self.answers

        class Answer(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answers[body["RequestId"]] = body
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        # A short poll interval: shutdown() waits for it, and every emulator stops its server.
        thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def request(
        self, request_type: str, logical_id: str, stack_id: str, properties: dict[str, Any], old: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The request CloudFormation sends the function."""
        request: dict[str, Any] = {
            "RequestType": request_type,
            "ResponseURL": self.url,
            "StackId": stack_id,
            "RequestId": str(uuid.uuid4()),
            "LogicalResourceId": logical_id,
            "ResourceType": "Custom::" + logical_id,
            "ResourceProperties": properties,
        }
        if request_type != "Create":
            request["PhysicalResourceId"] = f"{logical_id}-physical"
        if old is not None:
            request["OldResourceProperties"] = old
        return request

    def outcome(self, request: dict[str, Any]) -> dict[str, Any]:
        """The function's answer; a deployment error when it gave none or FAILED."""
        answer = self.answers.get(request["RequestId"])
        if answer is None:
            raise RuntimeError(f"{request['LogicalResourceId']}: the custom resource never answered CloudFormation")
        if answer["Status"] != "SUCCESS":
            raise RuntimeError(f"{request['LogicalResourceId']}: {answer['Status']}: {answer.get('Reason')}")
        return answer
