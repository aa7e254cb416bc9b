"""Which model serves a project: the auto-deploy gate and the deployment strategies."""

from __future__ import annotations

from mirror.errors import TrainingError
from mirror.registry import Deployment, ModelRecord
from trainer.metrics import key_metric

STRATEGIES = ("most_recent", "best_score", "best_fit", "rollback", "best_recent_score")
"""``best_recent_score`` scores the models on the monitor's recent rows (``trainer.challenge``)."""


def beats(task: str, candidate: ModelRecord, deployed: ModelRecord | None) -> bool:
    """Whether a newly trained model should replace the deployed one (higher key metric)."""
    if deployed is None:
        return True
    metric = key_metric(task)
    new, old = candidate.metrics.get(metric), deployed.metrics.get(metric)
    if new is None:
        return False
    return old is None or new > old


def choose(
    task: str,
    strategy: str,
    models: list[ModelRecord],
    deployments: list[Deployment],
    *,
    algorithm: str | None = None,
) -> ModelRecord:
    """The model ``strategy`` picks among ``models`` (oldest first, already narrowed to
    ``algorithm`` if one was given), given the project's ``deployments`` (oldest first)."""
    if strategy not in STRATEGIES:
        raise TrainingError(
            f"unknown deployment strategy {strategy!r}; use one of: {', '.join(STRATEGIES)},"
            " or deploy a model by id"
        )
    where = f" with algorithm {algorithm}" if algorithm else ""
    if not models:
        raise TrainingError(f"the project has no models{where} to deploy", sqlstate="42704")
    if strategy == "most_recent":
        return models[-1]
    if strategy in ("best_score", "best_fit"):
        metric = key_metric(task)
        scored = [m for m in models if m.metrics.get(metric) is not None]
        if not scored:
            raise TrainingError(f"no model{where} has a {metric} score to compare")
        # Highest score wins; among equals, the most recent.
        return max(reversed(scored), key=lambda m: m.metrics[metric])
    return _rollback(models, deployments, where)


def deployment_stack(deployments: list[Deployment]) -> list[int]:
    """Deployed model ids, earliest at the bottom: a deployment pushes, a rollback pops."""
    stack: list[int] = []
    for deployment in deployments:
        if deployment.strategy == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != deployment.model_id:
                stack.append(deployment.model_id)
        elif not stack or stack[-1] != deployment.model_id:
            stack.append(deployment.model_id)
    return stack


def _rollback(models: list[ModelRecord], deployments: list[Deployment], where: str) -> ModelRecord:
    by_id = {m.id: m for m in models}
    earlier = [i for i in deployment_stack(deployments)[:-1] if i in by_id]
    if not earlier:
        raise TrainingError(
            f"there is no earlier deployment{where} to roll back to", sqlstate="55000"
        )
    return by_id[earlier[-1]]
