"""The pure core: OVSDB rows -> model -> desired charon and kernel state -> status.

No I/O, no clocks, no processes: plain data in, plain data out.
"""
