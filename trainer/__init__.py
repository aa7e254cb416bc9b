"""Training models on snapshots of the mirror (not built yet)."""
