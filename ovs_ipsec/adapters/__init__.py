"""One external system each (OVSDB, charon's VICI socket, kernel XFRM, files, the control
socket, the metrics endpoint, systemd): one call, one type conversion, bounded in time.
"""
