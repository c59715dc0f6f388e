"""Kernel XFRM: the daemon's block policies over netlink (`netlink`: codec and socket I/O), the
whole table through iproute2 for display (`iproute2`: its text parsed), and `adapter` (`Xfrm`,
the I/O shell the daemon holds)."""
