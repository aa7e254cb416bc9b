"""The sidecar core: the DuckDB mirror, configuration, the CLI and shared types."""
