"""Per-tunnel `options:ipsec_*`: what they ask of charon (`settings`, always loaded), and, loaded
only when a tunnel has such options, their translation (`translate`) through the option table
(`options`: the rows, `values`: their value parsers, `proposals`: the proposal grammar). `docs`
renders the table for docs/ipsec-options.md; the daemon never loads it.
"""
