"""Approvals of fork builds sent by someone who should not get a build: each is answered, and builds
nothing. The real app and worker (the rig), the fake GitHub and GitLab APIs answering who may approve.
"""

from __future__ import annotations

from typing import Any

from tests.e2e.support import github_delivery, gitlab_delivery
from tests.e2e.test_approval import BASE, FIRST, FORK, SECOND, button, fork_pull_request, mr_note, pr_comment
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab
from tests.reliability.rig import RigFactory


def approve_routes(text: str, policy: str = "approve") -> str:
    return text.replace(
        'branches = ["master"]\nproject = "hello-build"',
        f'branches = ["master"]\nforks = "{policy}"\nproject = "hello-build"',
    ).replace('forks = "never"', f'forks = "{policy}"')


def answer(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.get_json()
    return body


def test_a_comment_claiming_to_be_the_owner_is_checked_with_github(
    rig_factory: RigFactory, github_api: FakeGitHub
) -> None:
    """author_association is the payload's word: OWNER there, read-only in GitHub's API, refused."""
    rig = rig_factory(edit=approve_routes)
    github_api.set_pull(BASE, 2, head_sha=FIRST, head_repository=FORK)
    github_api.set_permission(BASE, "mallory", "read")
    comment = pr_comment(2, "/ok-to-build", "mallory")
    comment["comment"]["author_association"] = "OWNER"

    response = rig.send(github_delivery("issue_comment", comment))

    assert response.status_code == 200
    assert "needs write access" in answer(response)["ignored"]
    assert rig.builds_started() == 0
    assert rig.services.store.approved_sha("github", BASE, 2) is None


def test_an_old_button_does_not_approve_a_new_head(rig_factory: RigFactory, github_api: FakeGitHub) -> None:
    rig = rig_factory(edit=approve_routes)
    github_api.set_pull(BASE, 2, head_sha=SECOND, head_repository=FORK)
    github_api.set_permission(BASE, "maintainer", "write")

    response = rig.send(github_delivery("check_run", button(2, FIRST, "maintainer")))

    assert response.status_code == 200
    assert "the head is now 2222222" in answer(response)["ignored"]
    assert rig.builds_started() == 0


def test_an_approval_changes_nothing_on_a_route_that_does_not_wait_for_one(
    rig_factory: RigFactory, github_api: FakeGitHub
) -> None:
    rig = rig_factory(edit=lambda text: approve_routes(text, "without-secrets"))
    github_api.set_pull(BASE, 2, head_sha=FIRST, head_repository=FORK)
    github_api.set_permission(BASE, "maintainer", "write")

    response = rig.send(github_delivery("issue_comment", pr_comment(2, "/ok-to-build", "maintainer")))

    assert response.status_code == 200
    assert "routes[hello].forks is without-secrets, not approve" in answer(response)["ignored"]
    assert rig.builds_started() == 0


def test_a_gitlab_approval_that_cannot_be_checked_is_answered_200(
    rig_factory: RigFactory, gitlab_api: FakeGitLab
) -> None:
    """GitLab disables a hook after four failed deliveries: GitLab's own outage must not do that."""
    rig = rig_factory(edit=approve_routes)
    gitlab_api.members[("1", 7)] = 40
    gitlab_api.fail_next(500, times=10)

    response = rig.send(gitlab_delivery(mr_note(FIRST, user_id=7, username="dev"), event="Note Hook"))

    assert response.status_code == 200
    assert answer(response)["ignored"].startswith("approval not checked: ")
    assert rig.builds_started() == 0


def test_an_approval_of_a_waiting_fork_builds_it_once_however_often_it_is_sent(
    rig_factory: RigFactory, github_api: FakeGitHub
) -> None:
    rig = rig_factory(edit=approve_routes)
    github_api.set_pull(BASE, 2, head_sha=FIRST, head_repository=FORK)
    github_api.set_permission(BASE, "maintainer", "admin")
    github_api.set_permission(BASE, "other-maintainer", "write")
    waiting = fork_pull_request("opened", FIRST)
    waiting["pull_request"]["number"] = 2
    assert "waiting" in answer(rig.send(github_delivery("pull_request", waiting)))

    first = rig.send(github_delivery("issue_comment", pr_comment(2, "/ok-to-build", "maintainer")))
    second = rig.send(github_delivery("check_run", button(2, FIRST, "other-maintainer")))

    assert (first.status_code, second.status_code) == (202, 200)
    assert "duplicate" in answer(second)
    params = rig.start_build_params()
    assert [request["sourceVersion"] for request in params] == [FIRST]
