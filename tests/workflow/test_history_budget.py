"""No run can reach Step Functions' 25,000-event history, whatever the template's parameters allow:
an execution that does is stopped where no Catch runs. A run's history is modelled as a fixed part,
a part per Region, 6 events per wait that ends on AWS's event (a callback: the same however long
it lasts) and 9 events per check of a polling loop; the model is held to a real run here, and the
worst case the template's bounds allow is computed from it and from the checks the back-off
(``ami_factory.polling``) gives each polling wait."""

from __future__ import annotations

from typing import Any

from ami_factory.account_copies import ACCOUNT_POLL_SECONDS
from ami_factory.polling import LONGEST_WAIT_SECONDS, polls_within, wait_after, waited
from ami_factory.rules import MAX_ACCOUNT_CELLS, MAX_REGIONS
from ami_factory_local import Emulator
from ami_factory_local.template import load_template
from tests.helpers import ALLOWED_ACCOUNT, ROOT, create_keys, key_arn
from write_asl import COPY_SLOT_RETRY

HISTORY_QUOTA = 25_000
EVENTS_PER_CHECK = (
    9  # the Wait's entered/exited, the check task's 5 (entered, scheduled, started, succeeded, exited), the Choice's 2
)
FIXED_EVENTS = 68  # what every run writes once: resolve, clean-up, prepare, seed, clone, generalize, image,
# the approval choice, the two Maps' own, the copies-into-accounts choice, finalize
FIXED_EVENTS_PER_REGION = 46  # a Region's two items: copy and launch check; then share, protect, publish
EVENTS_PER_SLOT_WAIT = 3  # a copy's attempt while EC2's own copy quota is full: scheduled, started, failed
EVENTS_PER_EVENT_WAIT = 6  # entered, scheduled, started, submitted, succeeded, exited: however long AWS takes
RETRY_MARGIN = 1_000  # what the worst case leaves for retries (3 events each) and what the model misses
# copy_to_accounts: KeepDelivered (5) and the Map's own (4), and per cell (account and Region) its
# iteration's 2, the copy call and its Choice (7), the Pass that ends it (2); then each look at the
# copy is a check.
EVENTS_FOR_ACCOUNTS = 9
EVENTS_PER_CELL = 11


def history_bound(checks: int, regions: int, slot_waits: int = 0, cells: int = 0, cell_checks: int = 0) -> int:
    # The seed, the image, a copy slot and a copy in each Region (the source's when encrypting), the
    # clean-up command, the stop or generalizing (a run has one of them), and the approval.
    event_waits = 2 + 2 * regions + 2 + 1
    return (
        FIXED_EVENTS
        + FIXED_EVENTS_PER_REGION * regions
        + EVENTS_PER_EVENT_WAIT * event_waits
        + EVENTS_PER_CHECK * checks
        + EVENTS_PER_SLOT_WAIT * slot_waits
        + (EVENTS_FOR_ACCOUNTS if cells else 0)
        + EVENTS_PER_CELL * cells
        + EVENTS_PER_CHECK * cell_checks
    )


def worst_checks(poll_seconds: int, generalize_wait: int, launch_check_wait: int, regions: int) -> int:
    """Every polling wait lasting as long as it may: the clone until SSM reaches it
    (GeneralizeMaxWaitSeconds), each launch check. Every other wait ends on AWS's events."""
    clone = polls_within(generalize_wait, poll_seconds)
    launch_check = polls_within(launch_check_wait, poll_seconds)
    return clone + regions * launch_check


def bounds() -> dict[str, tuple[int, int]]:
    parameters: dict[str, Any] = load_template(ROOT / "template.yaml")["Parameters"]
    names = ("PollIntervalSeconds", "MaxWaitSeconds", "GeneralizeMaxWaitSeconds", "LaunchCheckMaxWaitSeconds")
    return {name: (int(parameters[name]["MinValue"]), int(parameters[name]["MaxValue"])) for name in names}


def worst_case() -> tuple[int, int]:
    """(events, poll interval) of the worst run the template allows, with MAX_REGIONS Regions and
    MAX_ACCOUNT_CELLS copies into other accounts, each waiting as long as it may (and first for EC2's
    copy quota in its account)."""
    limits = bounds()
    low, high = limits["PollIntervalSeconds"]
    return max(
        (
            history_bound(
                worst_checks(
                    poll,
                    limits["GeneralizeMaxWaitSeconds"][1],
                    limits["LaunchCheckMaxWaitSeconds"][1],
                    MAX_REGIONS,
                ),
                MAX_REGIONS,
                (MAX_REGIONS + MAX_ACCOUNT_CELLS) * COPY_SLOT_RETRY["MaxAttempts"],  # every copy waits for EC2
                MAX_ACCOUNT_CELLS,
                MAX_ACCOUNT_CELLS * polls_within(limits["MaxWaitSeconds"][1], max(poll, ACCOUNT_POLL_SECONDS)),
            ),
            poll,
        )
        for poll in range(low, high + 1)
    )


def test_the_worst_run_the_template_allows_stays_inside_the_history_quota() -> None:
    events, poll = worst_case()
    assert events <= HISTORY_QUOTA - RETRY_MARGIN, f"{events} events at PollIntervalSeconds={poll}"


def test_without_the_back_off_the_same_bounds_would_not_fit() -> None:
    """The back-off is what keeps long waits cheap: at a constant interval the same run overflows."""
    limits = bounds()
    poll = limits["PollIntervalSeconds"][0]
    constant = -(-limits["MaxWaitSeconds"][1] // poll)
    assert history_bound(MAX_REGIONS * constant, MAX_REGIONS) > HISTORY_QUOTA


def test_waits_keep_the_interval_for_fifty_minutes_then_back_off_to_two_hours() -> None:
    assert [wait_after(polls, 60) for polls in (0, 49)] == [60, 60]
    assert [wait_after(polls, 60) for polls in (50, 51, 52)] == [90, 135, 203]
    assert wait_after(200, 60) == LONGEST_WAIT_SECONDS and wait_after(200, 3600) == LONGEST_WAIT_SECONDS
    assert [wait_after(polls, 5) for polls in (49, 50)] == [5, 8], "fifty checks at most at the interval"
    for poll in (5, 60, 3600):
        checks = polls_within(86400, poll)
        assert waited(checks, poll) >= 86400 > waited(checks - 1, poll), "the bound is exactly the wait"


def test_the_model_holds_a_real_run_with_every_kind_of_wait(make_emulator) -> None:
    """Clean-up, seed, clone, sysprep, image, four Regions' copies and launch checks, encrypt and
    protection: the model is an upper bound of the real history, and a tight one."""
    regions = ["us-east-1", "eu-west-1", "ap-southeast-2", "eu-central-1"]
    emu: Emulator = make_emulator(KmsKeyIds=",".join(key_arn(region) for region in regions))
    create_keys(emu, users=[f"arn:aws:iam::{ALLOWED_ACCOUNT}:root"], regions=regions)
    emu.world.images_take(900)
    emu.world.status_checks_take(180)
    instance_id = emu.launch_instance(name="web")
    emu.world.ssm_manage(instance_id, "Linux")
    request = {
        "instance_id": instance_id,
        "regions": regions[1:],
        "mode": "generalize",
        "cleanup": True,
        "encrypt": True,
        "launch_check": True,
        "share": {"accounts": [ALLOWED_ACCOUNT]},
        "protection": {"deregistration_protection": True, "deprecate_after_days": 30},
    }
    result = emu.run(request, name="every-wait")
    assert result.status == "SUCCEEDED", result.cause
    checks = sum(
        1
        for event in result.history
        if event["type"] == "TaskStateEntered" and event["stateEnteredEventDetails"]["name"].startswith("Check")
    )
    bound = history_bound(checks, len(regions))
    assert len(result.history) <= bound <= len(result.history) + 10, (len(result.history), checks, bound)


def test_the_model_holds_a_run_that_copies_into_accounts(make_emulator) -> None:
    """Two accounts' copies of two Regions' images, each looked at a few times: the cells' part of the
    model is an upper bound of the real history, and a tight one."""
    emu: Emulator = make_emulator(AllowedCopyAccounts="111122223333,444455556666", CopyAccountExternalId="x" * 16)
    for account in ("111122223333", "444455556666"):
        emu.deploy_target_account(account)
    emu.world.images_take(900)
    instance_id = emu.launch_instance(name="web")
    regions = ["us-east-1", "eu-west-1"]
    accounts = [{"account_id": "111122223333"}, {"account_id": "444455556666"}]
    result = emu.run({"instance_id": instance_id, "regions": regions[1:], "copy_to_accounts": accounts})
    assert result.output["status"] == "SUCCEEDED", result.cause
    plain = emu.run({"instance_id": instance_id, "regions": regions[1:]}, name="plain")
    entered = [
        event["stateEnteredEventDetails"]["name"] for event in result.history if event["type"] == "TaskStateEntered"
    ]
    cells, cell_checks = 4, entered.count("DeliverToAccount") - 4
    assert cell_checks >= 4  # each copy takes 15 minutes: at least one look after the copy call
    added = len(result.history) - len(plain.history)
    bound = history_bound(0, 0, cells=cells, cell_checks=cell_checks) - history_bound(0, 0)
    assert added <= bound <= added + 6, (added, bound)
