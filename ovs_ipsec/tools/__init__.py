"""Programs beside the daemon (lab, demo, PKI command line): the daemon never imports them."""
