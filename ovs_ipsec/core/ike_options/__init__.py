"""Per-tunnel `options:ipsec_*`: what they ask of charon (`settings`, always loaded) and the
option table that translates them (`table`, loaded only when a tunnel has such options).
"""
