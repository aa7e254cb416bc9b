"""The trainer: fitting models on mirror snapshots, online (River) learning, drift and retraining.

Algorithms go by PostgresML's names; a trained model is registered and deployed when it beats
the deployed one, online models keep learning from replicated rows, deployed models are watched
for drift, and projects retrain on a cron schedule or on drift.
"""
