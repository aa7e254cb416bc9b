"""CatBoost's estimators as scikit-learn's API expects them.

CatBoostClassifier.predict gives a column (one row of one class per input row) for more than
two classes; scikit-learn's metrics, searches and the sidecar's scoring expect one class per
row, as every other classifier gives. Imported only when a CatBoost model is made or loaded.
"""

from __future__ import annotations

from typing import Any

import catboost
import numpy as np


class CatBoostClassifier(catboost.CatBoostClassifier):
    """CatBoost's classifier, predicting one class per row."""

    def predict(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        predicted = super().predict(data, *args, **kwargs)
        if isinstance(predicted, np.ndarray) and predicted.ndim == 2 and predicted.shape[1] == 1:
            return predicted.ravel()
        return predicted
