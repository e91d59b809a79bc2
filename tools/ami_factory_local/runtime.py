"""An in-process Lambda runtime: moto's Lambda invoke runs the real handler from its CodeUri.

moto without Docker only echoes payloads; this replaces its ``invoke`` for the functions the
emulator deployed. Errors come back the way Lambda reports them (``x-amz-function-error`` and a body
with ``errorType`` = the exception's class name), so the state machine's Retry/Catch on our error
names behave as on AWS. Invocations are serialized (each one gets its function's environment), except
while a function pauses (``paused``): then others run, each with its own environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from moto.awslambda.models import LambdaBackend
from moto.awslambda_simple.models import LambdaSimpleBackend
from moto.core.models import botocore_stubber
from moto.events.models import Rule, events_backends
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

from .authorization import IAM_PREFIX, acting_as, mark_principal

# The interpreter's Lambda clients, kept for the process (see ``InProcessRuntime.installed``).
_INTERPRETER_CLIENTS_LOCK = threading.Lock()
_INTERPRETER_CLIENTS: dict[tuple[str, str, str, bool], Any] = {}


@dataclass
class FunctionCode:
    name: str
    arn: str
    code_dir: Path
    handler: str  # module.function, as in the template
    environment: dict[str, str]
    layer_dirs: list[Path]
    timeout: int = 60
    memory: int = 256
    role: str = ""  # the function's execution role (its name as deployed): every call it makes is that role's


@dataclass
class LambdaContext:
    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@dataclass
class InProcessRuntime:
    functions: dict[str, FunctionCode] = field(default_factory=dict)
    invocations: list[str] = field(default_factory=list)
    results: list[tuple[str, Any]] = field(default_factory=list)  # (function, what it returned), for tests
    _handlers: dict[str, Callable[..., Any]] = field(default_factory=dict)
    _crashes: dict[str, int] = field(default_factory=dict)  # function name suffix -> invocations left to crash
    _lock: threading.RLock = field(default_factory=threading.RLock)
    # Per thread, the environment each invocation found (innermost last): what a pausing function
    # puts back while others run, so its variables never leak into theirs.
    _outer_environments: dict[int, list[dict[str, str]]] = field(default_factory=dict)
    refused_deliveries: list[tuple[str, str]] = field(default_factory=list)  # (rule ARN, function name)
    state_machine_role: str = ""  # the interpreter's Lambda invocations are made by this role
    # What may invoke a function besides a role (Lambda's resource policy): function name -> the
    # ARNs of the EventBridge rules its AWS::Lambda::Permission names.
    invoke_permissions: dict[str, set[str]] = field(default_factory=dict)
    # Whether a role (a rule target's RoleArn) may put events on a bus: set by the emulator from IAM.
    may_put_events: Callable[[str, str], bool] | None = None

    def register(self, code: FunctionCode) -> None:
        self.functions[code.name] = code

    def _load(self, code: FunctionCode) -> Callable[..., Any]:
        if code.name not in self._handlers:
            module_name, function_name = code.handler.rsplit(".", 1)
            for path in code.layer_dirs:
                if str(path) not in sys.path:
                    sys.path.insert(0, str(path))
            spec = importlib.util.spec_from_file_location(
                f"_ami_factory_function_{code.name.replace('-', '_')}", code.code_dir / f"{module_name}.py"
            )
            assert spec and spec.loader, f"cannot load {code.code_dir}/{module_name}.py"
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self._handlers[code.name] = getattr(module, function_name)
        return self._handlers[code.name]

    def clients_made_at_init(self) -> dict[str, set[str]]:
        """Each loaded function's handler's ``clients``, the services whose clients it made at Init, by
        their IAM prefixes (what the authorizer records calls by)."""
        return {
            name: {IAM_PREFIX.get(service, service) for service in getattr(handler, "clients", ())}
            for name, handler in self._handlers.items()
        }

    @contextmanager
    def environment_of(self, name: str) -> Iterator[None]:
        """A deployed function's environment (its ledger table, its settings), for a test that seeds
        what the function's code reads through that code; the calls made inside are the test's own,
        as the operator's are, not the function's role's."""
        with self._lock, _environment(self.functions[name]):
            yield

    def crash(self, function: str, times: int) -> None:
        """The next ``times`` invocations of the function whose name ends with ``function`` (e.g.
        ``FinalizeFunction``) die before the handler runs, as a Lambda does that runs out of memory."""
        with self._lock:
            self._crashes[function] = times

    def invoke(self, name: str, payload: Any) -> tuple[bool, Any]:
        """Run the function; returns (errored, result or Lambda error body)."""
        code = self.functions[name]
        with self._lock, self._entered(), _environment(code):
            self.invocations.append(name)
            crashing = next((f for f, left in self._crashes.items() if name.endswith(f) and left > 0), None)
            if crashing:
                self._crashes[crashing] -= 1
                return True, {
                    "errorType": "Runtime.ExitError",
                    "errorMessage": "Runtime exited with error: signal: killed",
                }
            try:
                handler = self._load(code)
                context = LambdaContext(code.name, code.arn, code.memory)
                with acting_as(code.role, code.name):
                    result = handler(payload, context)
                self.results.append((name, result))
                return False, result
            except Exception as error:  # Lambda reports any exception this way
                return True, {
                    "errorType": type(error).__name__,
                    "errorMessage": str(error),
                    "stackTrace": traceback.format_exception(error)[-5:],
                }

    @contextmanager
    def _entered(self) -> Iterator[None]:
        stack = self._outer_environments.setdefault(threading.get_ident(), [])
        stack.append(dict(os.environ))
        try:
            yield
        finally:
            stack.pop()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The calling function pauses (StartRun pacing its starts): other functions run meanwhile, as
        other Lambda instances would, in the environment from before this invocation; its own comes
        back with the lock."""
        outer = self._outer_environments.get(threading.get_ident())
        if not self._lock._is_owned() or not outer:  # type: ignore[attr-defined]  # not inside an invocation
            yield
            return
        own = dict(os.environ)
        _replace_environment(outer[0])
        state = self._lock._release_save()  # type: ignore[attr-defined]  # every level this thread holds
        try:
            yield
        finally:
            self._lock._acquire_restore(state)  # type: ignore[attr-defined]
            _replace_environment(own)

    def invoke_checked(self, name: str, payload: Any) -> Any:
        errored, result = self.invoke(name, payload)
        if errored:
            raise RuntimeError(f"{name} failed: {result['errorType']}: {result['errorMessage']}")
        return result

    def deliver(self, event: dict[str, Any], events_backend: Any, bus: str = "default") -> list[Any]:
        """Offer ``event`` to every rule on the bus; returns what the matched targets returned."""
        results: list[Any] = []
        for rule in list(events_backend.event_buses[bus].rules.values()):
            results.extend(rule.send_to_targets(event, transform_input=False) or [])
        return results

    def _send_to_lambda_targets(self, rule: Any, event: dict[str, Any]) -> list[Any]:
        if not rule.event_pattern.matches_event(event):
            return []
        names = [target["Arn"].split(":function:")[-1] for target in rule.targets if ":function:" in target["Arn"]]
        results = [
            self.invoke_checked(name, event)
            for name in names
            if name in self.functions and self.may_invoke(rule.arn, name)
        ]
        for target in rule.targets:
            if ":event-bus/" in target["Arn"]:
                results.extend(self._forward(rule, target, event))
        return results

    def _forward(self, rule: Any, target: dict[str, Any], event: dict[str, Any]) -> list[Any]:
        """A rule whose target is another Region's bus passes the event on unchanged (its Region, source
        and id are the original's), if the target's role may put events on that bus."""
        arn = str(target["Arn"])
        if self.may_put_events is None or not self.may_put_events(str(target.get("RoleArn", "")), arn):
            self.refused_deliveries.append((rule.arn, arn))
            return []
        _, _, _, region, account, resource = arn.split(":", 5)
        return self.deliver(event, events_backends[account][region], resource.split("/", 1)[1])

    def may_invoke(self, rule_arn: str, name: str) -> bool:
        """Whether the function's resource policy lets EventBridge invoke it for this rule (as Lambda
        checks an AWS::Lambda::Permission); a rule without one fails its delivery, as on AWS."""
        if rule_arn in self.invoke_permissions.get(name, set()):
            return True
        self.refused_deliveries.append((rule_arn, name))
        return False

    @contextmanager
    def installed(self) -> Iterator[InProcessRuntime]:
        runtime = self
        originals: dict[type, Callable[..., Any]] = {
            LambdaBackend: LambdaBackend.invoke,
            LambdaSimpleBackend: LambdaSimpleBackend.invoke,
        }

        def make_invoke(backend_class: type) -> Callable[..., Any]:
            def invoke(
                backend: Any, function_name: str, qualifier: str | None, body: Any, headers: Any, response_headers: Any
            ) -> Any:
                name = function_name.split(":function:")[-1].split(":")[0]
                if name not in runtime.functions:
                    return originals[backend_class](backend, function_name, qualifier, body, headers, response_headers)
                payload = json.loads(body) if body else {}
                errored, result = runtime.invoke(name, payload)
                if errored:
                    response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps(result).encode()

            return invoke

        make_client = lambda_eval_utils.boto_client_for  # type: ignore[attr-defined]  # moto imports it there

        def cached_client(region: str, service: str, state_credentials: Any = None) -> Any:
            # moto's interpreter builds a new boto3 client for every Lambda task (tens of ms each); the
            # interpreter's clients are kept for the process, one per Region, service and role (moto
            # signs with fixed keys whatever the state's credentials, and points them at its server
            # when its in-process stubber is off).
            key = (region, service, runtime.state_machine_role, botocore_stubber.enabled)
            with _INTERPRETER_CLIENTS_LOCK:
                if key not in _INTERPRETER_CLIENTS:
                    made = make_client(region=region, service=service, state_credentials=state_credentials)
                    _INTERPRETER_CLIENTS[key] = mark_principal(made, runtime.state_machine_role, "states")
                return _INTERPRETER_CLIENTS[key]

        def send_to_targets(rule: Rule, event: dict[str, Any], transform_input: bool = True) -> list[Any]:
            # moto's EventBridge has no Lambda targets; ours run in process, as the real ones run on AWS.
            return runtime._send_to_lambda_targets(rule, event)

        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(Rule, "send_to_targets", send_to_targets))
            stack.enter_context(mock.patch.object(lambda_eval_utils, "boto_client_for", cached_client))
            for backend_class in originals:
                stack.enter_context(mock.patch.object(backend_class, "invoke", make_invoke(backend_class)))
            yield self


def _replace_environment(values: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(values)


@contextmanager
def _environment(code: FunctionCode) -> Iterator[None]:
    lambda_env = {
        "AWS_LAMBDA_FUNCTION_NAME": code.name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(code.memory),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    }
    with mock.patch.dict(os.environ, {**lambda_env, **code.environment}):
        yield
