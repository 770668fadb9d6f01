"""``FailureMonitor``: the one place a client decides whether a remote is up.

FoundationDB's ``FailureMonitor`` is the model: connection outcomes feed it (a
connect that fails, a connection that breaks, health pings that go unanswered
mark an address failed; a connect that succeeds marks it available), and every
caller that needs to know asks it instead of guessing from its own errors.
``get_reply_unless_failed_for`` is built on :meth:`FailureMonitor.failed_for`.

An address the monitor has never heard of is not failed: nothing has gone wrong
with it yet.  The monitor holds no I/O of its own; peers report to it.
"""

from __future__ import annotations

from typing import final

import anyio

__all__ = ["FailureMonitor"]


@final
class _State:
    __slots__ = ("changed", "failed_since", "reason")

    def __init__(self) -> None:
        self.failed_since: float | None = None
        self.reason = ""
        self.changed: anyio.Event | None = None


@final
class FailureMonitor:
    """Per remote address: failed or available, since when, and why."""

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}
        self.failures_seen = 0
        self.recoveries_seen = 0

    def __repr__(self) -> str:
        failed = [address for address, s in self._states.items() if s.failed_since is not None]
        return f"<FailureMonitor failed={failed}>"

    def is_failed(self, address: str) -> bool:
        """True while the last outcome seen for ``address`` was a failure."""
        state = self._states.get(address)
        return state is not None and state.failed_since is not None

    def failed_since(self, address: str) -> float | None:
        """When ``address`` was last seen going from available to failed, or None."""
        state = self._states.get(address)
        return None if state is None else state.failed_since

    def reason(self, address: str) -> str:
        """Why ``address`` is failed ('' if it is not)."""
        state = self._states.get(address)
        return "" if state is None or state.failed_since is None else state.reason

    async def on_state_change(self, address: str) -> None:
        """Return at the next change of ``address`` between failed and available.

        Like any wait, bound it (``anyio.fail_after``) or let structured
        concurrency cancel it.
        """
        state = self._state(address)
        changed = state.changed
        if changed is None:
            changed = state.changed = anyio.Event()
        await changed.wait()

    # -- fed by the peers ------------------------------------------------------------

    def report_failure(self, address: str, now: float, reason: str) -> None:
        state = self._state(address)
        state.reason = reason
        if state.failed_since is None:
            state.failed_since = now
            self.failures_seen += 1
            self._changed(state)

    def report_available(self, address: str) -> None:
        state = self._states.get(address)
        if state is not None and state.failed_since is not None:
            state.failed_since = None
            state.reason = ""
            self.recoveries_seen += 1
            self._changed(state)

    def forget(self, address: str) -> None:
        """Drop what is known of ``address`` (bounded memory): it is unknown again,
        hence not failed, and whoever waits on it is woken, as for any change."""
        state = self._states.pop(address, None)
        if state is not None:
            self._changed(state)

    def _state(self, address: str) -> _State:
        state = self._states.get(address)
        if state is None:
            state = self._states[address] = _State()
        return state

    @staticmethod
    def _changed(state: _State) -> None:
        changed, state.changed = state.changed, None
        if changed is not None:
            changed.set()
