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

from .analysis import inference
from .analysis.inference import decode_windows, infer
from .analysis.likelihood import elbo_per_image, log_marginal_likelihood
from .analysis.metrics import accuracy_by_count, localisation
from .core.config import AIRConfig
from .core.guide import guide
from .core.model import model
from .core.prior import z_pres_prior_probs
from .core.transform import bounding_boxes, image_to_window, window_to_image
from .data import load_multi_mnist
from .estimators.nvil import NVIL_ELBO
from .estimators.rws import RWS_ELBO
from .estimators.vimco import VIMCO_ELBO
from .pretrained_model import heldout_scenes, pretrained
from .pyro_compat import from_pyro_state_dict, to_pyro_state_dict
from .train.checkpoint import export_params, load_params
from .train.dataset_recipes import DATASET_RECIPES, DatasetRecipe
from .train.recipes import PRESETS, OptimConfig, Recipe
from .train.step import make_step
from .train.svi import StepInfo, make_svi, make_update

__version__ = "0.3.0"

__all__ = [
    "AIRConfig",
    "NVIL_ELBO",
    "OptimConfig",
    "PRESETS",
    "RWS_ELBO",
    "DATASET_RECIPES",
    "DatasetRecipe",
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
