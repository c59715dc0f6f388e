"""The seam between the daemon and an IKE daemon: what the applier, the SA watch and the loop
ask of one. `adapters/charon.py`'s `Charon` (strongSwan over VICI) and `adapters/pluto.py`'s
`Pluto` (Libreswan) both provide it; `cli.py` picks one at start-up (`--ike-daemon`) and
nothing else knows which.

Refusals are `CharonError` and a lost daemon `CharonUnreachable` for either (errors.py).

May import: core.connections, core.outcomes, core.reconcile, core.sas, errors, stdlib.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ovs_ipsec.core.connections import KeySpec
from ovs_ipsec.core.outcomes import Outcome
from ovs_ipsec.core.reconcile import Action
from ovs_ipsec.core.sas import IkeSa
from ovs_ipsec.errors import CharonError


class IkeDaemon(Protocol):
    on_wait: Callable[[], None] | None

    @property
    def connected(self) -> bool: ...

    @property
    def busy(self) -> bool: ...

    def connect(self) -> None: ...

    def close(self) -> None: ...

    def version(self) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]:
        """`uptime.since` changes when the IKE daemon restarted."""
        ...

    def get_algorithms(self) -> dict[str, Any]: ...

    def owned_conns(self) -> frozenset[str]: ...

    def owned_shared(self) -> frozenset[str]: ...

    def key_ids(self) -> frozenset[str]: ...

    def carry_out(self, actions: Sequence[Action]) -> Sequence[Mapping[str, Any] | CharonError]:
        """LoadShared, LoadConn and UnloadShared actions, one outcome per action, in order."""
        ...

    def load_key(self, spec: KeySpec) -> str: ...

    def unload_key(self, key_id: str) -> None: ...

    def unload_conn(self, name: str) -> None: ...

    def unload_shared(self, secret_id: str) -> None: ...

    def terminate_ike(self, conn: str) -> None: ...

    def listed_sas(self) -> dict[str, tuple[IkeSa, ...]]: ...

    def failures(self, sas: Mapping[str, tuple[IkeSa, ...]]) -> dict[str, Outcome]:
        """Why negotiations of connections without an established IKE_SA failed, as far as
        the IKE daemon tells it otherwise than by events (charon: nothing here)."""
        ...
