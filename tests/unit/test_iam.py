"""The emulator's IAM evaluation (tools/ami_factory_local/iam.py): IAM's rules, one by one."""

from __future__ import annotations

from typing import Any

import pytest

from ami_factory_local.iam import MODELLED_CONDITION_KEYS, Call, Resource, evaluate, is_modelled, statements

IMAGE = "arn:aws:ec2:us-east-1::image/ami-1"
INSTANCE = "arn:aws:ec2:us-east-1:123456789012:instance/i-1"


def decide(
    *listed: dict[str, Any],
    action: str = "ec2:DeregisterImage",
    resources: tuple[Resource, ...] = (Resource(IMAGE, tags_known=True),),
    **context: list[str],
) -> Any:
    policy = {"Version": "2012-10-17", "Statement": list(listed)}
    return evaluate(statements({"policy": policy}), Call(action, resources, context))


def allow(
    action: str = "ec2:DeregisterImage", resource: Any = "arn:aws:ec2:*::image/*", **condition: Any
) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": "Allow", "Action": action, "Resource": resource}
    if condition:
        statement["Condition"] = condition
    return statement


def tagged(**tags: str) -> Resource:
    return Resource(IMAGE, {f"aws:resourcetag/{key}": [value] for key, value in tags.items()}, tags_known=True)


def test_nothing_allows_by_default_and_the_reason_names_the_action() -> None:
    decision = decide()
    assert not decision.allowed
    assert decision.resource == IMAGE
    assert "no identity-based policy allows the ec2:DeregisterImage action" in decision.reason()


def test_an_explicit_deny_wins_over_any_allow() -> None:
    deny = {"Effect": "Deny", "Action": "ec2:*", "Resource": "*"}
    decision = decide(allow(), deny)
    assert not decision.allowed
    assert decision.explicit_deny is not None and "explicit deny" in decision.reason()


@pytest.mark.parametrize(
    ("action", "allowed"),
    [
        ("ec2:DeregisterImage", True),
        ("EC2:deregisterimage", True),
        ("ec2:Deregister*", True),
        ("ec2:DeleteSnapshot", False),
    ],
)
def test_actions_match_without_case_and_with_wildcards(action: str, allowed: bool) -> None:
    assert decide(allow(action=action)).allowed is allowed


@pytest.mark.parametrize(
    ("pattern", "allowed"),
    [
        ("arn:aws:ec2:*::image/*", True),
        ("arn:aws:ec2:us-east-1::image/ami-1", True),
        ("arn:aws:ec2:us-west-2::image/*", False),
        ("arn:aws:ec2:us-east-1::IMAGE/*", False),  # resources match with case
        ("arn:aws:ec2:*:123456789012:image/*", False),  # images have no account in their ARN
        ("*", True),
    ],
)
def test_resources_match_part_by_part_with_case(pattern: str, allowed: bool) -> None:
    assert decide(allow(resource=pattern)).allowed is allowed


def test_not_action_and_not_resource_invert_the_match() -> None:
    assert decide({"Effect": "Allow", "NotAction": "ec2:Run*", "Resource": "*"}).allowed
    assert not decide({"Effect": "Allow", "Action": "*", "NotResource": "arn:aws:ec2:*::image/*"}).allowed


def test_every_resource_of_a_call_needs_an_allow() -> None:
    resources = (Resource(IMAGE), Resource(INSTANCE))
    only_images = decide(allow(action="ec2:CreateImage"), action="ec2:CreateImage", resources=resources)
    assert not only_images.allowed and only_images.resource == INSTANCE
    both = decide(
        allow(action="ec2:CreateImage", resource=[IMAGE, INSTANCE]), action="ec2:CreateImage", resources=resources
    )
    assert both.allowed and len(both.allowed_by) == 2


def test_a_resource_tag_condition_reads_the_resource_own_tags() -> None:
    statement = allow(StringEquals={"aws:ResourceTag/ami-factory:managed": "true"})
    assert decide(statement, resources=(tagged(**{"ami-factory:managed": "true"}),)).allowed
    assert not decide(statement, resources=(tagged(**{"ami-factory:managed": "false"}),)).allowed
    assert not decide(statement, resources=(tagged(),)).allowed  # a missing key never equals


def test_a_tag_condition_on_a_resource_whose_tags_the_emulator_does_not_read_fails_closed() -> None:
    table = Resource("arn:aws:dynamodb:us-east-1:123456789012:table/ledger")
    statement = allow(action="dynamodb:PutItem", resource="*", StringNotEquals={"aws:ResourceTag/env": "prod"})
    refused = decide(statement, action="dynamodb:PutItem", resources=(table,))
    assert not refused.allowed and "aws:ResourceTag/env" in refused.reason()
    known = Resource(table.arn, tags_known=True)
    assert decide(statement, action="dynamodb:PutItem", resources=(known,)).allowed


def test_condition_key_names_match_without_case() -> None:
    statement = allow(StringEquals={"AWS:RESOURCETAG/Team": "x"})
    assert decide(statement, resources=(tagged(team="x"),)).allowed


def test_negated_operators_hold_for_a_missing_key_and_if_exists_lets_it_pass() -> None:
    assert decide(allow(StringNotEquals={"aws:ResourceTag/env": "prod"})).allowed
    assert not decide(allow(StringNotEquals={"aws:ResourceTag/env": "prod"}), resources=(tagged(env="prod"),)).allowed
    assert decide(allow(StringEqualsIfExists={"aws:ResourceTag/env": "dev"})).allowed
    assert not decide(
        allow(StringEqualsIfExists={"aws:ResourceTag/env": "dev"}), resources=(tagged(env="prod"),)
    ).allowed


def test_string_like_and_any_of_the_policy_values() -> None:
    statement = allow(StringLike={"aws:RequestedRegion": ["eu-*", "us-east-1"]})
    assert decide(statement, **{"aws:requestedregion": ["eu-west-1"]}).allowed
    assert decide(statement, **{"aws:requestedregion": ["us-east-1"]}).allowed
    assert not decide(statement, **{"aws:requestedregion": ["us-west-2"]}).allowed


def test_for_all_values_holds_when_every_request_value_is_named_and_for_none() -> None:
    statement = allow(action="ec2:CreateTags", **{"ForAllValues:StringLike": {"aws:TagKeys": ["ami-factory:*"]}})
    keys = lambda *names: {"aws:tagkeys": list(names)}  # noqa: E731
    assert decide(statement, action="ec2:CreateTags", **keys("ami-factory:a", "ami-factory:b")).allowed
    assert not decide(statement, action="ec2:CreateTags", **keys("ami-factory:a", "Name")).allowed
    assert decide(statement, action="ec2:CreateTags").allowed  # IAM's rule: true for no values


def test_for_any_value_needs_one_match() -> None:
    deny = {
        "Effect": "Deny",
        "Action": "ec2:CreateTags",
        "Resource": "*",
        "Condition": {"ForAnyValue:StringLike": {"aws:TagKeys": ["ami-factory:*"]}},
    }
    assert not decide(
        allow(action="ec2:CreateTags"), deny, action="ec2:CreateTags", **{"aws:tagkeys": ["Name", "ami-factory:x"]}
    ).allowed
    assert decide(allow(action="ec2:CreateTags"), deny, action="ec2:CreateTags", **{"aws:tagkeys": ["Name"]}).allowed


@pytest.mark.parametrize(
    ("operator", "values", "holds"),
    [
        ("ForAllValues:StringNotEquals", ["x", "y"], True),
        ("ForAllValues:StringNotEquals", ["a", "x"], False),
        ("ForAllValues:StringNotEquals", [], True),
        ("ForAnyValue:StringNotEquals", ["a", "x"], True),
        ("ForAnyValue:StringNotEquals", ["a"], False),
        ("ForAnyValue:StringNotEquals", [], False),
        ("ForAnyValue:StringEquals", [], False),
    ],
)
def test_negated_set_operators_apply_the_negation_to_each_value(operator: str, values: list[str], holds: bool) -> None:
    statement = allow(action="ec2:CreateTags", **{operator: {"aws:TagKeys": ["a"]}})
    context = {"aws:tagkeys": values} if values else {}
    assert decide(statement, action="ec2:CreateTags", **context).allowed is holds


def test_arn_operators_match_with_wildcards() -> None:
    statement = allow(
        action="iam:PassRole", resource="*", ArnEquals={"lambda:FunctionArn": "arn:aws:lambda:*:*:function:f"}
    )
    arn = {"lambda:functionarn": ["arn:aws:lambda:us-east-1:123456789012:function:f"]}
    assert decide(statement, action="iam:PassRole", **arn).allowed


def test_bool_and_null() -> None:
    statement = allow(action="kms:CreateGrant", resource="*", Bool={"kms:GrantIsForAWSResource": "true"})
    assert decide(statement, action="kms:CreateGrant", **{"kms:grantisforawsresource": ["true"]}).allowed
    assert not decide(statement, action="kms:CreateGrant").allowed
    assert decide(allow(Null={"aws:ResourceTag/env": "true"})).allowed
    assert not decide(allow(Null={"aws:ResourceTag/env": "false"})).allowed


def test_a_condition_key_the_emulator_does_not_model_fails_closed_both_ways() -> None:
    assert not is_modelled("aws:PrincipalOrgID")
    unknown = {"StringEquals": {"aws:PrincipalOrgID": "o-1"}}
    refused = decide(allow(**unknown))
    assert not refused.allowed and "aws:PrincipalOrgID" in refused.reason() and "fails closed" in refused.reason()
    denied = decide(allow(), {"Effect": "Deny", "Action": "*", "Resource": "*", "Condition": unknown})
    assert denied.explicit_deny is not None


def test_an_operator_the_emulator_does_not_know_fails_closed() -> None:
    refused = decide(allow(DateGreaterThan={"aws:RequestedRegion": "2020-01-01"}))
    assert not refused.allowed and "DateGreaterThan" in refused.reason()


def _condition_keys(node: Any) -> set[str]:
    """Every condition key of the policies in ``node`` (trust policies left out: not evaluated)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Condition" and isinstance(value, dict):
                found |= {name for operator in value.values() for name in operator}
            elif key != "AssumeRolePolicyDocument":
                found |= _condition_keys(value)
    elif isinstance(node, list):
        for item in node:
            found |= _condition_keys(item)
    return found


def test_every_condition_key_the_template_uses_is_modelled() -> None:
    from ami_factory_local.emulator import PROJECT_ROOT
    from ami_factory_local.template import load_template

    keys = _condition_keys(load_template(PROJECT_ROOT / "template.yaml")["Resources"])
    assert {"ec2:CreateAction", "aws:RequestTag/ami-factory:role", "iam:PassedToService"} <= keys
    assert sorted(key for key in keys if not is_modelled(key)) == []
    assert "aws:RequestTag/" in MODELLED_CONDITION_KEYS


def iam_report_of(tmp_path: Any, capsys: Any, records: list[dict[str, Any]]) -> tuple[int, str]:
    """``tools/iam_report.py --strict`` over one usage file of ``records``: its exit code and report."""
    import json
    import sys
    from unittest import mock

    import iam_report

    (tmp_path / "usage-1.jsonl").write_text("\n".join(json.dumps(record) for record in records))
    with mock.patch.object(sys, "argv", ["iam_report", str(tmp_path), "--strict"]):
        code = iam_report.main()
    return code, capsys.readouterr().out


def test_the_iam_report_lists_grants_no_path_used_and_keeps_the_justified(tmp_path: Any, capsys: Any) -> None:
    granted = [
        {"statement": "P statement 0", "actions": ["ec2:DescribeImages", "ec2:DeregisterImage"], "resources": ["*"]},
        {"statement": "AWSLambdaBasicExecutionRole statement 0", "actions": ["logs:PutLogEvents"], "resources": ["*"]},
    ]
    records = [
        {"role": "FnRole", "granted": granted, "used": []},
        {"role": "FnRole", "granted": granted, "used": [["ec2:DescribeImages", "P statement 0"]]},
    ]
    code, printed = iam_report_of(tmp_path, capsys, records)
    assert code == 1
    assert "UNUSED  ec2:DeregisterImage (P statement 0)" in printed
    assert "UNUSED  ec2:DescribeImages" not in printed and "used    ec2:DescribeImages" in printed
    assert "kept    logs:PutLogEvents" in printed and "1 grant(s)" in printed


def test_the_iam_report_lists_clients_init_makes_that_no_path_called(tmp_path: Any, capsys: Any) -> None:
    """A service in a handler's clients= is called in one test and not another: used. One no test
    called is UNCALLED, and --strict fails on it."""
    records = [
        {"role": "FnRole", "granted": [], "used": []},
        {"function": "fn", "made_at_init": ["dynamodb", "ec2", "sts"], "called": ["dynamodb"]},
        {"function": "fn", "made_at_init": ["dynamodb", "ec2", "sts"], "called": ["ec2"]},
        {"function": "other", "made_at_init": ["ssm"], "called": ["ssm"]},
    ]
    code, printed = iam_report_of(tmp_path, capsys, records)
    assert code == 1
    assert "UNCALLED  fn makes clients at Init for sts, which no test path called" in printed
    assert "other" not in printed and "1 function(s)" in printed
