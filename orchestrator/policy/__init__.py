"""Pure policies: state and ``now`` in, decisions out (no I/O, no clock, no sleeping)."""
