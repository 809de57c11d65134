"""The Raft log and snapshots stay replayable across versions of the metadata code.

The fixtures in tests/node/fixtures/ were written by the version before the metadata
contract was typed (make_metadata_fixtures.py): a log of commands as the Raft log carries
them, the snapshot of the state they built, and what that version answered. The current
code must apply the same log with the same outcomes, and load the old snapshot into a state
that answers every query the same way.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from cargohold.errors import RegistryError
from node.metadata.state import MetadataState

FIXTURES = Path(__file__).parent / "fixtures"


def _outcome(fn: Any) -> Any:
    try:
        return {"ok": fn()}
    except RegistryError as exc:
        return {"error": type(exc).__name__, "message": exc.message, "detail": exc.detail}


def _json(value: Any) -> Any:
    """As it would travel: JSON-encoded and decoded (tuples become lists)."""
    return json.loads(json.dumps(value))


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    return json.loads((FIXTURES / "metadata_expected.json").read_text())


def _answers(st: MetadataState, queries: list[list[Any]]) -> list[Any]:
    return [_json(_outcome(lambda op=op, args=args: st.query(op, args))) for op, args in queries]


def test_old_log_replays_with_the_same_outcomes(expected: dict[str, Any]) -> None:
    log = pickle.loads((FIXTURES / "metadata_log.pickle").read_bytes())
    st = MetadataState()
    results = [_json(_outcome(lambda op=op, args=args: st.apply(op, args))) for op, args in log]
    assert results == expected["results"]
    assert _answers(st, expected["queries"]) == expected["answers"]


def test_old_snapshot_loads_into_the_same_state(expected: dict[str, Any]) -> None:
    st = MetadataState()
    st.load((FIXTURES / "metadata_state.dump").read_bytes())
    assert _answers(st, expected["queries"]) == expected["answers"]
    again = MetadataState()
    again.load(st.dump())
    assert _answers(again, expected["queries"]) == expected["answers"]
    assert again.snapshot() == st.snapshot()


def test_old_snapshot_then_old_log_tail(expected: dict[str, Any]) -> None:
    """A node that restarts from the old snapshot applies further commands like before."""
    st = MetadataState()
    st.load((FIXTURES / "metadata_state.dump").read_bytes())
    log = pickle.loads((FIXTURES / "metadata_log.pickle").read_bytes())
    # Re-applying the log is the retried-commands case: same state afterwards.
    for op, args in log:
        _outcome(lambda op=op, args=args: st.apply(op, args))
    assert _answers(st, expected["queries"]) == expected["answers"]
