"""Operations: the registry, configuration files and telemetry (docs/architecture.md)."""
