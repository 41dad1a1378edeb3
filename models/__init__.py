"""The paper's model zoo: five blocks, eight variants, and the measurements the paper reports.

    import models
    net = models.create_model("alpha")        # any of models.list_models()
    models.count_parameters(net), models.size_mb(net), models.macs_per_image(net)
"""
from . import variants  # noqa: F401  (registers the eight variants)
from .measure import count_parameters, macs_per_image, size_mb, state_dict_bytes
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model",
           "count_parameters", "size_mb", "state_dict_bytes", "macs_per_image"]
