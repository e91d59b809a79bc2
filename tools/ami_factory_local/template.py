"""Reads ``template.yaml`` the way CloudFormation would, for what the emulator deploys.

Only what the emulator needs is resolved: parameters, the function properties merged with
``Globals``, and ``Ref``/``Fn::Sub``/``Fn::GetAtt``/``Fn::If``/``Fn::Split``/``Fn::Join`` (and
``AWS::NoValue``) in environment variables, the state machine's ``DefinitionSubstitutions`` and the
roles' policies. Anything else raises, so a template change the emulator does not
understand is loud, not silently wrong.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class _CfnLoader(yaml.SafeLoader):
    pass


def _short_form(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if tag_suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {"Ref": value} if tag_suffix == "Ref" else {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _short_form)


def load_template(path: Path) -> dict[str, Any]:
    """The template as data; a fresh copy each time, parsed once per file content (YAML is slow)."""
    return copy.deepcopy(_parsed_template(path.read_text()))


@functools.lru_cache(maxsize=8)
def _parsed_template(text: str) -> dict[str, Any]:
    parsed: dict[str, Any] = yaml.load(text, Loader=_CfnLoader)
    return parsed


NO_VALUE: Any = object()  # what ``!Ref AWS::NoValue`` resolves to: the property or list item is left out


@dataclass
class Resolver:
    parameters: dict[str, str]
    pseudo: dict[str, str]
    attributes: dict[tuple[str, str], str]  # (logical id, attribute) -> value
    conditions: dict[str, Any] = field(default_factory=dict)

    def condition_holds(self, name: str | None) -> bool:
        return True if name is None else bool(self.resolve(self.conditions[name]))

    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict) and len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return NO_VALUE if arg == "AWS::NoValue" else self._ref(arg)
            if key == "Fn::If":
                condition, when_true, when_false = arg
                return self.resolve(when_true if self.condition_holds(condition) else when_false)
            if key == "Fn::Split":
                delimiter, text = arg
                return str(self.resolve(text)).split(delimiter)
            if key == "Fn::Join":
                delimiter, parts = arg
                if not isinstance(delimiter, str):  # CloudFormation takes no function there
                    raise ValueError(f"Fn::Join's delimiter must be a literal string, not {delimiter!r}")
                return delimiter.join(str(part) for part in self.resolve(parts))
            if key == "Fn::GetAtt":
                return self.attributes[(arg[0], arg[1])]
            if key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))
                return re.sub(
                    r"\$\{([^}]+)\}",
                    lambda match: (
                        str(variables[match.group(1)]) if match.group(1) in variables else self._sub(match.group(1))
                    ),
                    text,
                )
            if key == "Fn::Equals":
                left, right = self.resolve(arg)
                return left == right
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key.startswith("Fn::"):
                raise NotImplementedError(f"the emulator does not resolve {key}")
        if isinstance(value, dict):
            resolved = {key: self.resolve(item) for key, item in value.items()}
            return {key: item for key, item in resolved.items() if item is not NO_VALUE}
        if isinstance(value, list):
            return [item for item in (self.resolve(item) for item in value) if item is not NO_VALUE]
        return value

    def _ref(self, name: str) -> str:
        if name in self.parameters:
            return self.parameters[name]
        if name in self.pseudo:
            return self.pseudo[name]
        return self.attributes[(name, "Ref")]

    def _sub(self, expression: str) -> str:
        if "." in expression:
            logical_id, attribute = expression.split(".", 1)
            return self.attributes[(logical_id, attribute)]
        return self._ref(expression)


def parameter_values(template: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    declared = template.get("Parameters", {})
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise KeyError(f"template.yaml has no parameter(s) {unknown}")
    return {name: str(overrides.get(name, spec.get("Default", ""))) for name, spec in declared.items()}


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each AWS::Serverless::Function's properties, with Globals.Function merged in (as SAM does)."""
    defaults = template.get("Globals", {}).get("Function", {})
    merged = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        properties = {**defaults, **resource["Properties"]}
        variables = {
            **defaults.get("Environment", {}).get("Variables", {}),
            **resource["Properties"].get("Environment", {}).get("Variables", {}),
        }
        properties["Environment"] = {"Variables": variables}
        merged[logical_id] = properties
    return merged


def resources_of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {key: value for key, value in template["Resources"].items() if value["Type"] == resource_type}
