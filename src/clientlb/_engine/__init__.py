"""The call engine: one logical call across its attempts (retry policy and
budget, deadline, hedging, naming, connectivity); see docs/architecture.md."""
