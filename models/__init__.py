"""The paper's model zoo: five blocks, eight variants declared as specs, and the measurements the paper reports.

    import models
    net = models.create_model("alpha")        # any of models.list_models()
    models.count_parameters(net), models.size_mb(net), models.macs_per_image(net)

    spec = models.get_spec("alpha")           # or models.load_spec("my.toml"): architectures as data
    models.param_count(spec), models.spec_hash(spec), models.build(spec)
    models.fit_to_budget(spec)                # widths scaled to the paper's budget, models.MAX_PARAMS
    models.classifier("v6", state_dict, classes)  # uint8 images in, the training normalisation inside
"""
from . import variants  # noqa: F401  (registers the eight variants)
from .budget import MAX_PARAMS, MAX_SIZE_MB, fit_to_budget, param_count
from .deploy import PREPROCESSING, ImageClassifier, classifier
from .measure import count_parameters, macs_per_image, size_mb, state_dict_bytes
from .registry import create_model, get_spec, list_models, register_model, registered_spec
from .spec import (BlockSpec, HeadSpec, NetSpec, SpecError, dump_json, dump_toml, from_dict, load_spec, spec_hash,
                   spec_params, to_dict)
from .variants import PAPER_VARIANTS, build, register_spec

__all__ = ["create_model", "list_models", "PAPER_VARIANTS", "register_model", "get_spec", "registered_spec",
           "register_spec", "build", "count_parameters", "size_mb", "state_dict_bytes", "macs_per_image",
           "NetSpec", "BlockSpec", "HeadSpec", "SpecError", "load_spec", "dump_toml", "dump_json", "spec_hash",
           "spec_params", "from_dict", "to_dict", "MAX_PARAMS", "MAX_SIZE_MB", "param_count", "fit_to_budget",
           "PREPROCESSING", "ImageClassifier", "classifier"]
