"""The httpx integration: sync and async transports and session affinity (docs/architecture.md)."""
