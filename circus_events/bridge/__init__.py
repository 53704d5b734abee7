"""The per-host bridge: local ZeroMQ side, Redis side, and the loop that joins them."""
