"""The consumer's side: the example template that launches an instance from the published parameter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ami_factory.rules import parameter_name
from ami_factory_local.template import load_template

ROOT = Path(__file__).resolve().parents[2]
CFN_LINT = shutil.which("cfn-lint") or str(Path(sys.executable).parent / "cfn-lint")
EXAMPLE = ROOT / "examples" / "launch-from-parameter.yaml"


@pytest.mark.slow
def test_the_example_template_passes_cfn_lint() -> None:
    result = subprocess.run([CFN_LINT, str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_example_reads_the_parameter_ami_factory_publishes() -> None:
    template = load_template(EXAMPLE)
    image = template["Parameters"]["ImageId"]
    assert image["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    deployed_prefix = load_template(ROOT / "template.yaml")["Parameters"]["ParameterPrefix"]["Default"]
    assert image["Default"] == parameter_name(deployed_prefix, "web-server")
    assert template["Resources"]["Instance"]["Properties"]["ImageId"] == {"Ref": "ImageId"}
