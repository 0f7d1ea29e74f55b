"""Driving runs: the SLO gate (gate), a local Medserve pinned to one replica (local), a FIFO
stub server (stub), the mixed-priority overload run (overload), and the soak with RSS
sampling (soak)."""
