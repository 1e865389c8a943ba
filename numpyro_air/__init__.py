"""numpyro-air: Attend, Infer, Repeat (Eslami et al., 2016) in JAX, NumPyro and Flax.

What users call::

    import numpyro_air as air
    recipe = air.Recipe.tutorial()                 # AIRConfig + OptimConfig of Pyro's tutorial
                                                   # (every named recipe: air.PRESETS["fast"], ...)
    svi = air.make_svi(recipe)                     # numpyro.infer.SVI with NVIL_ELBO
    update = air.make_update(svi, recipe.air)      # pure (state, images, step) -> (state, info)
    config, params = air.load_params("run/checkpoint.npz")
    out = air.infer(params, images, key, config)   # counts, boxes, presence, reconstructions
"""

from . import inference
from .checkpoint import export_params, load_params
from .config import AIRConfig
from .data import load_multi_mnist
from .elbo import NVIL_ELBO
from .guide import guide
from .inference import decode_windows, infer
from .likelihood import elbo_per_image, log_marginal_likelihood
from .metrics import accuracy_by_count, localisation
from .model import model
from .pretrained_model import heldout_scenes, pretrained
from .prior import z_pres_prior_probs
from .pyro_compat import from_pyro_state_dict, to_pyro_state_dict
from .recipes import PRESETS, OptimConfig, Recipe
from .step import make_step
from .svi import StepInfo, make_svi, make_update
from .transform import bounding_boxes, image_to_window, window_to_image
from .vimco import VIMCO_ELBO

__version__ = "0.2.0"

__all__ = [
    "AIRConfig",
    "NVIL_ELBO",
    "OptimConfig",
    "PRESETS",
    "Recipe",
    "StepInfo",
    "VIMCO_ELBO",
    "accuracy_by_count",
    "elbo_per_image",
    "from_pyro_state_dict",
    "localisation",
    "log_marginal_likelihood",
    "to_pyro_state_dict",
    "bounding_boxes",
    "export_params",
    "decode_windows",
    "guide",
    "heldout_scenes",
    "image_to_window",
    "infer",
    "inference",
    "load_multi_mnist",
    "load_params",
    "make_step",
    "make_svi",
    "make_update",
    "model",
    "pretrained",
    "window_to_image",
    "z_pres_prior_probs",
]
