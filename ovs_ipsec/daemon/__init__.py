"""The daemon: one ovs.poller loop that wires the adapters to the core."""
