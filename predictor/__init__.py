"""Scoring, write-back and the SQL endpoint (not built yet)."""
