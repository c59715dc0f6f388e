"""Re-record charon-<version>-capabilities.json: a lab charon's `get-algorithms`, the `plugins`
of `stats` and `version`, with every lab plugin and without some. Needs root (namespaces):

    .venv/bin/python tests/unit/data/record_capabilities.py \
        tests/unit/data/charon-5.9.8-capabilities.json
"""

from __future__ import annotations

import json
import sys

from ovs_ipsec.core.vici_wire import bytes_to_text as decode
from ovs_ipsec.tools.lab import Lab

VARIANTS: dict[str, tuple[str, ...]] = {
    "full": (),
    "without-kdf": ("kdf",),
    "without-openssl-gcm": ("openssl", "gcm"),
    "without-openssl-gcm-kdf": ("openssl", "gcm", "kdf"),
}


def main(path: str) -> None:
    recorded = {}
    with Lab(1, daemon=False) as lab:
        host = lab[1]
        for label, without in VARIANTS.items():
            host.stop_charon()
            host.start_charon(without)
            with host.vici() as v:
                recorded[label] = {
                    "get-algorithms": decode(v.request("get-algorithms")),
                    "stats-plugins": decode(v.stats()).get("plugins"),
                    "version": decode(v.version()),
                }
    with open(path, "w") as f:
        json.dump(recorded, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
