"""Training models on Parquet snapshots of the mirror, under PostgresML's names."""
