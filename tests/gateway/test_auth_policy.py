"""The role policy of gateway/auth/directory.py on its own: group grants add to a user's
own, the longest namespace decides, robots hold only their listed actions in their listed
namespaces (never `*`, never cluster admin), and an expired robot is nobody."""

from __future__ import annotations

import time

from cargohold.metadata_api import (
    AccessData,
    GroupInfo,
    NamespaceInfo,
    RobotInfo,
    UserInfo,
)
from gateway.auth.directory import Directory, FileUsersPolicy, RolePolicy
from gateway.auth.scopes import Scope

H = "$2b$04$" + "h" * 53
ALL = frozenset({"pull", "push", "delete"})


class _Meta:
    def __init__(self, data: AccessData) -> None:
        self.data = data

    async def access_list(self) -> AccessData:
        return self.data


def _data(robot_expiry: float | None) -> AccessData:
    return AccessData(
        users=[
            UserInfo("ann", H, False, False),
            UserInfo("bob", H, False, False),
            UserInfo("root", H, False, True),
            UserInfo("off", H, True, False),
        ],
        namespaces=[
            NamespaceInfo("team", "private", {"ann": "reader"}, {"devs": "developer"}),
            NamespaceInfo("team/ops", "private", {}, {"ops": "maintainer"}),
            NamespaceInfo("lib", "public", {}, {}),
            NamespaceInfo("secret", "private", {"off": "admin"}, {"devs": "reader"}),
        ],
        groups=[GroupInfo("devs", ["ann", "off"]), GroupInfo("ops", ["bob"])],
        robots=[
            RobotInfo("ci", H, robot_expiry, {"team": ["pull", "push"]}, "", 1.0),
            RobotInfo("ro", H, None, {"team/ops": ["pull"], "secret": ["delete"]}, "", 1.0),
        ],
    )


def repo(name: str) -> Scope:
    return Scope("repository", name, frozenset({"pull", "push", "delete", "*"}))


async def _policy(robot_expiry: float | None = None) -> tuple[Directory, RolePolicy]:
    directory = Directory(_Meta(_data(robot_expiry)), 0)  # type: ignore[arg-type]
    await directory.refresh()
    return directory, RolePolicy(directory)


async def test_group_grants_add_to_the_users_own() -> None:
    _, policy = await _policy()
    # ann: reader herself, developer through `devs`.
    assert await policy.granted("ann", repo("team/app")) == {"pull", "push"}
    # The longest namespace decides: team/ops holds no grant for ann or devs.
    assert await policy.granted("ann", repo("team/ops/x")) == frozenset()
    # bob: maintainer through `ops` in team/ops only.
    assert await policy.granted("bob", repo("team/ops/x")) == ALL
    assert await policy.granted("bob", repo("team/app")) == frozenset()
    # A disabled member gets nothing through the group either.
    assert await policy.granted("off", repo("secret/x")) == frozenset()
    assert await policy.granted("root", repo("anything/at/all")) == ALL | {"*"}


async def test_robots_hold_only_their_listed_actions() -> None:
    directory, policy = await _policy(time.time() + 3600)
    assert await policy.granted("robot$ci", repo("team/app")) == {"pull", "push"}
    assert await policy.granted("robot$ci", repo("team/ops/x")) == frozenset()  # other ns
    assert await policy.granted("robot$ci", repo("secret/x")) == frozenset()
    assert await policy.granted("robot$ci", repo("lib/base")) == {"pull"}  # public
    assert await policy.granted("robot$ci", repo("elsewhere")) == frozenset()
    assert await policy.granted("robot$ro", repo("team/ops/x")) == {"pull"}
    assert await policy.granted("robot$ro", repo("secret/x")) == {"delete"}
    # A user called like a robot does not exist; robots are never users or admins.
    assert directory.user("robot$ci") is None
    assert directory.valid("robot$ci") and not directory.valid("robot$nope")
    assert directory.lookup("robot$ci") == H.encode()


async def test_an_expired_robot_is_nobody() -> None:
    directory, policy = await _policy(time.time() - 1)
    assert not directory.valid("robot$ci")
    assert directory.lookup("robot$ci") is None
    assert await policy.granted("robot$ci", repo("team/app")) == frozenset()
    assert await policy.granted("robot$ci", repo("lib/base")) == {"pull"}  # as anonymous


async def test_htpasswd_users_do_everything_robots_what_they_may() -> None:
    directory, _ = await _policy(None)
    policy = FileUsersPolicy(directory)
    assert await policy.granted("anyone", repo("x/y")) == ALL | {"*"}
    assert await policy.granted("robot$ci", repo("team/app")) == {"pull", "push"}
    assert await policy.granted("robot$ci", repo("x/y")) == frozenset()
    assert await policy.granted(None, repo("x/y")) == frozenset()
    assert await FileUsersPolicy(None).granted("robot$ci", repo("team/app")) == frozenset()
