"""`python -m ovs_ipsec` runs the daemon, like the `ovs-monitor-ipsec` console script."""

from ovs_ipsec.entry import main

if __name__ == "__main__":
    main()
