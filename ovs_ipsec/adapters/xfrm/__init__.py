"""Kernel XFRM: the daemon's block policies over netlink, the whole table through iproute2."""
