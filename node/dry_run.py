"""The dry-run twin of an Admin role that can rehearse its pass (GC, retention): the
"<role>-dry-run" role runs the same pass in report-only mode and shares its progress."""

from __future__ import annotations

from typing import Any, Protocol


class Rehearsable(Protocol):
    def progress(self) -> dict[str, Any]: ...

    async def trigger(self, wait: bool = False, dry_run: bool = False) -> dict[str, Any]: ...


class DryRunTrigger:
    """An Admin role whose trigger is the wrapped role's pass with `dry_run=True`."""

    alias = True  # Admin.Status shows the progress once, under the wrapped role's name

    def __init__(self, role: Rehearsable) -> None:
        self._role = role

    def progress(self) -> dict[str, Any]:
        return self._role.progress()

    async def trigger(self, wait: bool = False) -> dict[str, Any]:
        return await self._role.trigger(wait=wait, dry_run=True)
