"""ovs-ipsec: Open vSwitch IPsec tunnels driven into strongSwan (VICI) and kernel XFRM."""

__version__ = "0.1.0"
PROGRAM_NAME = "ovs-monitor-ipsec"
