"""Servable model folders built from weights that ship inside packages (no hub at run time)."""
