"""What an image costs to keep and a run to make: the summary's figures against a hand calculation."""

from __future__ import annotations

import io

import pytest

from ami_factory.pricing import Prices, load_prices, orchestration_cost
from ami_factory_cli import cli
from ami_factory_local import Emulator
from tests.helpers import sample


def image_gib(emu: Emulator, region: str, image_id: str) -> int:
    (image,) = emu.client("ec2", region).describe_images(ImageIds=[image_id])["Images"]
    return sum(m["Ebs"]["VolumeSize"] for m in image["BlockDeviceMappings"])


def test_the_summary_prices_the_images_like_a_hand_calculation(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="priced")
    assert result.status == "SUCCEEDED", result.cause
    sizes = {r["region"]: image_gib(emu, r["region"], r["image_id"]) for r in result.output["regions"]}
    assert set(sizes.values()) == {15}, "moto's images are 15 GiB; the figures below assume it"
    cost = result.output["cost"]
    # 3 Regions x 15 GiB x $0.05 = $2.25 a month; archive 45 x $0.0125 = $0.5625; two copies x 15 GiB x $0.02 = $0.60
    assert (cost["monthly_standard"], cost["monthly_archive"], cost["copy_transfer_once"]) == (2.25, 0.5625, 0.6)
    assert [(r["region"], r["copy_transfer"]) for r in cost["regions"]] == [
        ("us-east-1", 0.0),
        ("eu-west-1", 0.3),
        ("ap-southeast-2", 0.3),
    ]


def test_price_overrides_reach_the_summary(make_emulator) -> None:
    emu = make_emulator(PriceOverrides='{"snapshot_gb_month": 0.1, "inter_region_gb": 0}')
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="priced-2")
    cost = result.output["cost"]
    assert (cost["monthly_standard"], cost["copy_transfer_once"]) == (4.5, 0.0)


def test_the_cli_estimates_every_image_made_of_an_instance(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    for run in ("one", "two"):
        assert emu.run(sample("request-basic.json", instance_id=instance_id), name=run).status == "SUCCEEDED"
    out = io.StringIO()
    args = cli.parser().parse_args(
        ["estimate", "--instance-id", instance_id, "--regions", "eu-west-1,ap-southeast-2", "--region", "us-east-1"]
    )
    assert cli.estimate(args, out) == 0
    report = out.getvalue()
    assert report.count("ami-factory-web-one") == 3 and report.count("ami-factory-web-two") == 3
    assert "6 images: $4.50/month at most (standard tier)" in report


def test_prices_have_one_home_and_typos_are_refused() -> None:
    assert load_prices("") == Prices() and load_prices('{"archive_gb_month": 0.01}').archive_gb_month == 0.01
    with pytest.raises(ValueError, match="snapshot_gb_mnth"):
        load_prices('{"snapshot_gb_mnth": 0.05}')
    # 400 transitions ($0.01) + 130 requests ($0.000026) + 130 x 0.5 s x 0.25 GB ($0.000271)
    assert orchestration_cost(400, 130, 130 * 0.5 * 0.25, Prices()) == pytest.approx(0.010297, abs=1e-6)
