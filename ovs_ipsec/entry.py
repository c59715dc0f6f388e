"""The `ovs-monitor-ipsec` entry point: keeps OpenSSL out of a daemon that has no use for it,
then runs `cli.main`.

Python's `ssl` and `_hashlib` modules map libssl and libcrypto: about 4 MiB of resident memory,
a sixth of the daemon's budget at a thousand tunnels. `hashlib` falls back to its built-in
implementations without `_hashlib` (what the ovs library's `random` import wants them for), and
only two things here need `ssl`: an OVSDB reached over `ssl:`/`pssl:` (the ovs library imports
it optionally and does without it otherwise) and `--metrics-address` (prometheus-client imports
it). Without either, both imports are made to fail before anything asks for them. This runs only
in the daemon's own process, never on import. (`cryptography`, for certificates, brings its own
OpenSSL and is loaded only when a certificate is in use.)

May import: cli, stdlib.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def needs_openssl(argv: Sequence[str]) -> bool:
    return any("ssl:" in arg or arg.startswith("--metrics-address") for arg in argv)


def main() -> None:
    if not needs_openssl(sys.argv[1:]):
        for module in ("ssl", "_hashlib"):
            sys.modules.setdefault(module, None)  # type: ignore[assignment]
    from ovs_ipsec.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
