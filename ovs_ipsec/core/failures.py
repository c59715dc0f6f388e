"""Tunnel failures counted by cause (`ovs_ipsec_tunnel_failures_total`). Pure: the caller
passes the time.

A failure counts once, when its tunnel enters "failed" (or, failed already, gets another cause:
a later attempt that failed otherwise), under the cause it has then; another reason with the same
cause while it stays failed is the same failure. One cause is held back for a moment: the
generic one (`negotiation`) that a failed IKE_SA has until charon's log says why. strongSwan
5.9.8 sends its log lines to VICI asynchronously, so the line that tells the real cause
(`received AUTHENTICATION_FAILED notify error`) can arrive after the ike-updown event that ended
the IKE_SA, in a later turn of the daemon's loop on a loaded machine. Counted at once, that one
failure would count twice, once as `negotiation` and once as, say, `authentication`; a counter
cannot take the first back. So a failure whose cause is still generic is counted when a real
cause replaces it (under that cause), when the tunnel leaves "failed", or after `grace` seconds
(as `negotiation`), whichever comes first.

May import: causes, status, stdlib.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from ovs_ipsec.core.causes import Cause
from ovs_ipsec.core.status import State, StateKey

# charon's log line comes within milliseconds of the ike-updown event; a second covers a loaded
# machine and still counts long before any scrape interval.
CAUSE_GRACE = 1.0


class FailureCounts:
    """Tunnels entering "failed", by cause; fed every change of a tunnel's state key."""

    def __init__(self, grace: float = CAUSE_GRACE) -> None:
        self._grace = grace
        self._counts: Counter[str] = Counter()
        self._held: dict[str, float] = {}  # tunnel -> when its generic failure counts anyway

    def counts(self) -> Mapping[str, int]:
        return self._counts

    def deadline(self) -> float | None:
        """When `settle()` next has something to count (None: nothing held)."""
        return min(self._held.values(), default=None)

    def change(self, name: str, before: StateKey | None, now: StateKey | None, at: float) -> None:
        """Tunnel `name` went from `before` to `now` (None: no such tunnel) at time `at`."""
        held = self._held.pop(name, None)
        if now is None or now[0] is not State.FAILED:
            if held is not None:
                self._counts[Cause.NEGOTIATION.value] += 1  # it failed; nothing said more
            return
        cause = _cause(now)
        # Another cause while failed is another failure (a new attempt that failed otherwise);
        # another reason with the same cause is the same one, told more precisely.
        new = before is None or before[0] is not State.FAILED or _cause(before) is not cause
        if not (new or held is not None):
            return
        if cause is Cause.NEGOTIATION:
            self._held[name] = at + self._grace if held is None else held
        else:
            self._counts[cause.value] += 1

    def settle(self, at: float) -> None:
        """Count the generic failures no cause replaced within the grace."""
        for name, due in list(self._held.items()):
            if at >= due:
                del self._held[name]
                self._counts[Cause.NEGOTIATION.value] += 1


def _cause(key: StateKey) -> Cause:
    return key[2] or Cause.NEGOTIATION
