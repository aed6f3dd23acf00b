"""The poll interval policy and the Action's wait loop, the latter against the CodeBuild double."""

from __future__ import annotations

import uuid

import boto3
import pytest
from botocore.config import Config
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import aws
from bridge.builders.codebuild import CodeBuildBuilder
from bridge.errors import BuilderError
from bridge.model import BuildRecord, BuildRequest
from bridge.poll import Backoff, wait_for_build
from tests.fakes.codebuild_double import PHASES, CodeBuildDouble, Scenario


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(5, cap=60)
    assert [backoff.failure() for _ in range(6)] == [10, 20, 40, 60, 60, 60]
    assert backoff.success() == 5
    assert backoff.interval == 5
    assert backoff.failure() == 10  # starts over from the base, not from where it was


def test_backoff_default_cap_is_four_times_the_base() -> None:
    backoff = Backoff(3)
    for _ in range(10):
        backoff.failure()
    assert backoff.interval == 12


def test_backoff_cap_below_base_means_no_growth() -> None:
    backoff = Backoff(30, cap=10)
    backoff.failure()
    assert backoff.interval == 30


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 8.0), (0.5, 7.2), (1.0, 6.4)])
def test_jitter_only_shortens(draw: float, expected: float) -> None:
    backoff = Backoff(2, cap=8, jitter=0.2, random=lambda: draw)
    for _ in range(4):
        backoff.failure()
    assert backoff.failure() == pytest.approx(expected)
    assert backoff.delay() == pytest.approx(expected)


@pytest.mark.parametrize(("base", "jitter"), [(0, 0.0), (-1, 0.0), (1, 1.5), (1, -0.1)])
def test_backoff_rejects_nonsense(base: float, jitter: float) -> None:
    with pytest.raises(ValueError, match=r"interval|jitter"):
        Backoff(base, jitter=jitter)


@settings(max_examples=200)
@given(
    base=st.floats(min_value=0.1, max_value=120),
    factor=st.floats(min_value=1, max_value=20),
    outcomes=st.lists(st.booleans(), max_size=60),
    draw=st.floats(min_value=0, max_value=1),
)
def test_backoff_interval_is_base_times_two_to_the_failures_since_success_capped(
    base: float, factor: float, outcomes: list[bool], draw: float
) -> None:
    backoff = Backoff(base, cap=base * factor, jitter=0.5, random=lambda: draw)
    failures = 0
    for ok in outcomes:
        if ok:
            backoff.success()
            failures = 0
        else:
            backoff.failure()
            failures += 1
        assert backoff.interval == pytest.approx(min(base * 2**failures, base * factor))
        assert base * 0.5 <= backoff.delay() <= backoff.cap + 1e-9


# ---- wait_for_build ------------------------------------------------------------------------


@pytest.fixture
def builder(boto_session: boto3.session.Session) -> CodeBuildBuilder:
    # One attempt per call, so every scripted throttle reaches the wait loop as a BuilderError, and
    # standard mode, so botocore's adaptive rate limiter does not slow the test's later polls.
    codebuild = boto_session.client(
        "codebuild", config=Config(retries={"mode": "standard", "total_max_attempts": 1})
    )
    return CodeBuildBuilder(codebuild, aws.client("logs", session=boto_session))


def test_wait_reports_each_change_once(builder: CodeBuildBuilder, codebuild_double: CodeBuildDouble) -> None:
    codebuild_double.script_next(Scenario(polls_per_phase=3, exported_env={"IMAGE_DIGEST": "sha256:ab"}))
    build = builder.start(BuildRequest({"projectName": "app"}))
    updates: list[BuildRecord] = []
    sleeps: list[float] = []

    final = wait_for_build(builder, build["id"], interval=7, on_update=updates.append, sleep=sleeps.append)

    assert final["buildStatus"] == "SUCCEEDED"
    assert final["exportedEnvironmentVariables"] == [{"name": "IMAGE_DIGEST", "value": "sha256:ab"}]
    assert [update["currentPhase"] for update in updates] == list(PHASES)
    polls = len(codebuild_double.calls("BatchGetBuilds"))
    assert polls > len(updates)  # unchanged records were not reported again
    assert sleeps == [7] * (polls - 1)


def test_wait_backs_off_on_throttling_and_recovers(
    builder: CodeBuildBuilder, codebuild_double: CodeBuildDouble
) -> None:
    build = builder.start(BuildRequest({"projectName": "app"}))
    while build["currentPhase"] != "UPLOAD_ARTIFACTS":
        build = builder.get_many([build["id"]])[build["id"]]
    codebuild_double.throttle(4, "BatchGetBuilds")
    sleeps: list[float] = []

    final = wait_for_build(
        builder, build["id"], interval=Backoff(5, cap=30), on_update=lambda _r: None, sleep=sleeps.append
    )

    assert final["buildComplete"]
    # 4 throttled polls, then FINALIZING (back to the base interval), then COMPLETED.
    assert sleeps == [10, 20, 30, 30, 5]


def test_wait_raises_non_retryable_errors(
    builder: CodeBuildBuilder, codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.fail("BatchGetBuilds", "AccessDeniedException")
    with pytest.raises(BuilderError) as caught:
        wait_for_build(
            builder, f"app:{uuid.uuid4()}", interval=1, on_update=lambda _r: None, sleep=lambda _s: None
        )
    assert not caught.value.retryable
    assert len(codebuild_double.calls("BatchGetBuilds")) == 1


def test_wait_gives_up_on_a_build_that_never_appears(
    builder: CodeBuildBuilder, codebuild_double: CodeBuildDouble
) -> None:
    sleeps: list[float] = []
    with pytest.raises(BuilderError, match="not found"):
        wait_for_build(
            builder, f"app:{uuid.uuid4()}", interval=2, on_update=lambda _r: None, sleep=sleeps.append
        )
    assert len(codebuild_double.calls("BatchGetBuilds")) == 3
    assert sleeps == [4, 8]


def test_wait_stops_at_the_timeout(builder: CodeBuildBuilder, codebuild_double: CodeBuildDouble) -> None:
    codebuild_double.script_next(Scenario(polls_per_phase=100))
    build = builder.start(BuildRequest({"projectName": "app"}))
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(BuilderError, match="still not complete after 60 s"):
        wait_for_build(
            builder,
            build["id"],
            interval=10,
            on_update=lambda _r: None,
            sleep=sleep,
            clock=lambda: now[0],
            timeout=60,
        )
    assert len(codebuild_double.calls("BatchGetBuilds")) == 7  # t = 0, 10, ..., 60
