"""The application on top: the CLI, the daemon wiring the parts, settings, control and metrics."""
