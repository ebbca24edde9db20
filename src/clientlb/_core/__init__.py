"""Core: endpoints, targets, outcomes, errors, per-endpoint state and load,
the balancer and its picks (docs/architecture.md)."""
