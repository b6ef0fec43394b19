"""Task plug-ins for the serving core: `lm` and `sensor`."""

from __future__ import annotations

from service.metrics import Metrics
from service.predictors.base import Decoded, Predictor
from service.predictors.lm import LmPredictor
from service.predictors.sensor import SensorPredictor
from service.registry import LoadedModel
from service.settings import Settings

__all__ = ["Decoded", "LmPredictor", "Predictor", "SensorPredictor", "make_predictor"]


def make_predictor(model: LoadedModel, settings: Settings, metrics: Metrics | None = None) -> Predictor:
    if model.task == "lm":
        return LmPredictor(model, settings, metrics)
    return SensorPredictor(model, settings, metrics)
