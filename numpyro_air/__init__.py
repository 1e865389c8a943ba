"""numpyro-air: Attend, Infer, Repeat (Eslami et al., 2016) in JAX, NumPyro and Flax."""

from .config import AIRConfig
from . import inference
from .distributions import PresenceBernoulli
from .elbo import NVIL_ELBO
from .guide import BASELINE_SITE, guide, is_baseline_param
from .model import model, validate_images
from .prior import count_distribution, make_prior, z_pres_prior_probs
from .transform import bounding_boxes, image_to_window, window_to_image

__version__ = "0.1.0"

__all__ = [
    "AIRConfig",
    "BASELINE_SITE",
    "NVIL_ELBO",
    "PresenceBernoulli",
    "bounding_boxes",
    "count_distribution",
    "guide",
    "image_to_window",
    "inference",
    "is_baseline_param",
    "make_prior",
    "model",
    "validate_images",
    "window_to_image",
    "z_pres_prior_probs",
]
