"""IAM's policy evaluation, for the emulator: is this call allowed to this role?

Follows the evaluation logic of identity-based policies: an explicit Deny in any statement wins; the
call needs an Allow for every resource it touches (EC2 authorizes each resource of a request on its
own); otherwise it is implicitly denied. Actions match case-insensitively with ``*`` and ``?``,
resources case-sensitively. Conditions: every operator in a block must hold, every key in an
operator, any of a key's values; ``IfExists``, ``ForAllValues:`` and ``ForAnyValue:`` as IAM reads
them; a key missing from the request makes a positive operator false and a negated one true.

Fails closed: a condition key not in :data:`MODELLED_CONDITION_KEYS`, or an operator not in
:data:`OPERATORS`, makes an Allow statement not apply and a Deny statement apply, and the decision
says which key or operator it was, so a template that uses one is loud here rather than silently
allowed. Not evaluated (AWS has them, the emulator does not): SCPs and RCPs, permission boundaries,
session policies, resource policies other than Lambda's invoke permissions, and trust policies.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Condition keys the emulator computes from the request and the world (a trailing ``/`` is a family:
# ``aws:ResourceTag/`` covers every tag key). Everything else fails closed.
MODELLED_CONDITION_KEYS: tuple[str, ...] = (
    "aws:RequestedRegion",
    "aws:RequestTag/",
    "aws:ResourceTag/",
    "aws:TagKeys",
    "ec2:CreateAction",
    "ec2:Region",
    "ec2:ResourceTag/",
    "ec2:Add/group",
    "ec2:Add/userId",
    "ec2:Remove/group",
    "ec2:Remove/userId",
    "iam:PassedToService",
    "kms:ViaService",
    "kms:GrantIsForAWSResource",
    "ssm:resourceTag/",
    "lambda:FunctionArn",
    "sts:ExternalId",
    "aws:PrincipalArn",
    "aws:ResourceAccount",
)


def is_modelled(key: str) -> bool:
    lowered = key.lower()
    return any(
        lowered.startswith(known.lower()) if known.endswith("/") else lowered == known.lower()
        for known in MODELLED_CONDITION_KEYS
    )


Context = Mapping[str, list[str]]  # condition key (lower case) -> its values in this request


@dataclass(frozen=True)
class Resource:
    """One resource a call touches, with the condition keys that belong to it (its tags, ...)."""

    arn: str
    context: Mapping[str, list[str]] = field(default_factory=dict)
    # Whether the emulator computed this resource's tag keys (EC2 resources): where it did not, a
    # condition on a tag key fails closed instead of reading as "no such tag".
    tags_known: bool = False


@dataclass(frozen=True)
class Call:
    """What IAM authorizes: one action on its resources, with the request's own condition keys."""

    action: str  # service:Operation
    resources: tuple[Resource, ...]
    context: Mapping[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Statement:
    policy: str  # the policy's name, for messages and the report
    index: int
    document: Mapping[str, Any]

    @property
    def effect(self) -> str:
        return str(self.document.get("Effect", ""))

    @property
    def label(self) -> str:
        sid = self.document.get("Sid")
        return f"{self.policy} statement {self.index}" + (f" ({sid})" if sid else "")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    action: str
    resource: str = ""
    explicit_deny: Statement | None = None
    allowed_by: tuple[Statement, ...] = ()  # one per resource, when allowed
    unmodelled: tuple[str, ...] = ()  # condition keys or operators that made a statement fail closed

    def reason(self) -> str:
        if self.explicit_deny is not None:
            return f"with an explicit deny in an identity-based policy ({self.explicit_deny.label})"
        reason = f"because no identity-based policy allows the {self.action} action"
        if self.unmodelled:
            reason += f" (the emulator does not model {', '.join(sorted(set(self.unmodelled)))}: it fails closed)"
        return reason


def statements(policies: Mapping[str, Mapping[str, Any]]) -> list[Statement]:
    """Every statement of the named policy documents (numbered as written; a None left out)."""
    found = []
    for name, document in policies.items():
        listed = document.get("Statement", [])
        for index, statement in enumerate(listed if isinstance(listed, list) else [listed]):
            if statement is not None:
                found.append(Statement(name, index, statement))
    return found


def evaluate(policy_statements: Iterable[Statement], call: Call) -> Decision:
    listed = list(policy_statements)
    allowed_by: list[Statement] = []
    unmodelled: list[str] = []
    for resource in call.resources or (Resource("*"),):
        context = {
            **{k.lower(): v for k, v in call.context.items()},
            **{k.lower(): v for k, v in resource.context.items()},
        }
        allow: Statement | None = None
        for statement in listed:
            if not (
                _action_matches(statement.document, call.action) and _resource_matches(statement.document, resource.arn)
            ):
                continue
            holds, missing = _conditions_hold(statement.document.get("Condition", {}), context, resource.tags_known)
            unmodelled.extend(missing)
            if statement.effect == "Deny" and (holds or missing):
                return Decision(False, call.action, resource.arn, explicit_deny=statement)
            if statement.effect == "Allow" and holds and not missing and allow is None:
                allow = statement
        if allow is None:
            return Decision(False, call.action, resource.arn, unmodelled=tuple(unmodelled))
        allowed_by.append(allow)
    return Decision(True, call.action, allowed_by=tuple(allowed_by))


def _listed(value: Any) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


@functools.lru_cache(maxsize=4096)
def _pattern(wildcard: str, ignore_case: bool) -> re.Pattern[str]:
    regex = "".join(".*" if char == "*" else "." if char == "?" else re.escape(char) for char in wildcard)
    return re.compile(regex, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def like(wildcard: str, value: str, ignore_case: bool = False) -> bool:
    return _pattern(wildcard, ignore_case).fullmatch(value) is not None


def _action_matches(statement: Mapping[str, Any], action: str) -> bool:
    if "NotAction" in statement:
        return not any(like(pattern, action, ignore_case=True) for pattern in _listed(statement["NotAction"]))
    return any(like(pattern, action, ignore_case=True) for pattern in _listed(statement.get("Action", [])))


def _resource_matches(statement: Mapping[str, Any], arn: str) -> bool:
    if "NotResource" in statement:
        return not any(_arn_like(pattern, arn) for pattern in _listed(statement["NotResource"]))
    return any(_arn_like(pattern, arn) for pattern in _listed(statement.get("Resource", [])))


def _arn_like(pattern: str, arn: str) -> bool:
    """ARN matching is per colon-separated part, so ``*`` in one part never spans into the next (as
    IAM matches), except in the last (resource) part, which may hold colons itself."""
    if pattern == "*":
        return True
    wanted, given = pattern.split(":", 5), arn.split(":", 5)
    return len(wanted) == len(given) and all(like(w, g) for w, g in zip(wanted, given, strict=True))


Compare = Callable[[str, str], bool]

_COMPARISONS: dict[str, tuple[Compare, bool]] = {  # operator -> (compare(policy value, request value), negated)
    "StringEquals": (lambda p, v: p == v, False),
    "StringNotEquals": (lambda p, v: p == v, True),
    "StringEqualsIgnoreCase": (lambda p, v: p.lower() == v.lower(), False),
    "StringNotEqualsIgnoreCase": (lambda p, v: p.lower() == v.lower(), True),
    "StringLike": (like, False),
    "StringNotLike": (like, True),
    "ArnEquals": (_arn_like, False),  # IAM matches ARNs part by part with wildcards in all four
    "ArnNotEquals": (_arn_like, True),
    "ArnLike": (_arn_like, False),
    "ArnNotLike": (_arn_like, True),
    "Bool": (lambda p, v: p.lower() == v.lower(), False),
}
OPERATORS = (*_COMPARISONS, "Null")


TAG_KEYS = ("aws:resourcetag/", "ec2:resourcetag/", "ssm:resourcetag/", "aws:requesttag/", "aws:tagkeys")


def _conditions_hold(
    block: Mapping[str, Mapping[str, Any]], context: Context, tags_known: bool
) -> tuple[bool, list[str]]:
    """(whether every condition holds, the keys or operators the emulator does not model)."""
    unmodelled = [
        key
        for keys in block.values()
        for key in keys
        if not is_modelled(key) or (not tags_known and key.lower().startswith(TAG_KEYS))
    ]
    unmodelled += [operator for operator in block if _parse_operator(operator) is None]
    if unmodelled:
        return False, unmodelled
    return all(
        _condition_holds(operator, key, _substituted(_listed(wanted), context), context.get(key.lower()))
        for operator, keys in block.items()
        for key, wanted in keys.items()
    ), []


def _parse_operator(operator: str) -> tuple[str, str, bool] | None:
    """(set qualifier, base operator, if-exists), or None for an operator the emulator does not know."""
    qualifier, _, base = operator.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    if qualifier not in ("", "ForAllValues", "ForAnyValue") or base not in OPERATORS:
        return None
    return qualifier, base, if_exists


POLICY_VARIABLE = re.compile(r"\$\{([^}]+)\}")


def _substituted(wanted: list[str], context: Context) -> list[str]:
    """Policy variables (``${aws:PrincipalTag/KEY}``) replaced by the request's value; a value whose
    variable the request lacks matches nothing (IAM's rule)."""
    result = []
    for value in wanted:
        missing = False

        def replace(match: re.Match[str]) -> str:
            nonlocal missing
            found = context.get(match.group(1).lower())
            if not found:
                missing = True
                return ""
            return found[0]

        replaced = POLICY_VARIABLE.sub(replace, value)
        if not missing:
            result.append(replaced)
    return result


def _condition_holds(operator: str, key: str, wanted: list[str], values: list[str] | None) -> bool:
    parsed = _parse_operator(operator)
    assert parsed is not None  # checked by _conditions_hold
    qualifier, base, if_exists = parsed
    if base == "Null":
        return (values is None or values == []) == (wanted[0].lower() == "true")
    compare, negated = _COMPARISONS[base]

    def holds_for(value: str) -> bool:  # the operator on one request value: any policy value matches
        matched = any(compare(p, value) for p in wanted)
        return not matched if negated else matched

    if qualifier == "ForAllValues":  # every request value satisfies it; true for none (IAM's rule)
        return all(holds_for(value) for value in values or [])
    if qualifier == "ForAnyValue":  # some request value satisfies it; false for none
        return any(holds_for(value) for value in values or [])
    if values is None or values == []:
        return if_exists or negated
    matched = any(compare(p, v) for p in wanted for v in values)
    return not matched if negated else matched


def trust_allows(
    trust_policy: Mapping[str, Any],
    role_arn: str,
    caller_arn: str,
    external_id: str | None,
    action: str = "sts:AssumeRole",
) -> bool:
    """Whether a role's trust policy lets ``caller_arn`` (a role's ARN) ``action`` (AssumeRole, or the
    TagSession a session's tags need) with ``external_id``: an Allow naming the caller or its account,
    whose conditions hold (no Deny is modelled)."""
    caller_account = caller_arn.split(":")[4]
    context = {"aws:principalarn": [caller_arn]} | ({"sts:externalid": [external_id]} if external_id else {})
    for statement in statements({"trust": trust_policy}):
        principals = _listed(statement.document.get("Principal", {}).get("AWS", []))
        if statement.effect != "Allow" or not any(
            principal in (caller_arn, caller_account, f"arn:aws:iam::{caller_account}:root") for principal in principals
        ):
            continue
        # A trust policy names no Resource: it is the role's own.
        own = Statement(statement.policy, statement.index, {**statement.document, "Resource": role_arn})
        if evaluate([own], Call(action, (Resource(role_arn),), context)).allowed:
            return True
    return False
