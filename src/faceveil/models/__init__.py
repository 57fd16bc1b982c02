"""Model architectures by name and the zoo of shipped, sha256-verified weights."""

from .registry import ARCHITECTURES, build
from .zoo import LoadedModel, available_models, default_model_name, load_model, save_weights

__all__ = ["ARCHITECTURES", "build", "LoadedModel", "available_models", "default_model_name",
           "load_model", "save_weights"]
