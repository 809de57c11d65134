"""What an identity may do: the actions granted on a scope.

`AnyUserPolicy` is the rule of the htpasswd and built-in token modes: every
authenticated user may do everything; anonymous callers nothing.
"""

from __future__ import annotations

from typing import Protocol

from gateway.auth.scopes import Scope

KNOWN_ACTIONS = frozenset({"pull", "push", "delete", "*"})


class Policy(Protocol):
    async def granted(self, user: str | None, scope: Scope) -> frozenset[str]:
        """The actions of `scope` that `user` (None: anonymous) may take."""
        ...


class AnyUserPolicy:
    async def granted(self, user: str | None, scope: Scope) -> frozenset[str]:
        if not user:
            return frozenset()
        return scope.actions & KNOWN_ACTIONS
