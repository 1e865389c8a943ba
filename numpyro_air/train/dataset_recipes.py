"""The recipe of each generated benchmark: :class:`DatasetRecipe` and :data:`DATASET_RECIPES`,
what ``numpyro-air train --dataset NAME`` trains with when no other flag is given."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from ..data.dsprites import MultiDSpritesConfig
from ..data.multi_mnist import MultiMNISTConfig
from ..data.scattered_mnist import ScatteredMNISTConfig
from .recipes import Recipe


@dataclass(frozen=True)
class DatasetRecipe:
    """What ``numpyro-air train --dataset NAME`` trains with when no other flag is given.

    Attributes:
        recipe: the model configuration (canvas, channels, steps, priors, networks) and optimiser.
        data: the generator configuration of the benchmark (``numpyro_air.data.DATASETS``).
        train_steps: optimisation steps (``-n``) of the measured results.
    """

    recipe: Recipe
    data: Any
    train_steps: int


def _multi_dsprites() -> DatasetRecipe:
    """64x64 RGB sprites of 9-18 px (up to 25 px across when rotated): windows of 64 / 2.5 = 26 px
    (scale prior 2.5 with a wide sd 0.5 for the size range; at 3, windows of 21 px, sprites were
    split over two steps longer), a 24x24x3 glimpse, a convolutional image embedding for the
    LSTM (the 12,288 inputs would need 12.6 M weights per LSTM), the relaxed presence of
    ``fast``, and occluding objects (``composition="over"``: the sprites are drawn over each other;
    against "add" +0.7 to +1.1 points of held-out accuracy in each of 4 seeds, 2026-12-05)."""
    air = Recipe.fast().air.replace(
        compute_dtype="float32",  # the precision its results were measured in
        image_size=64,
        channels=3,
        num_steps=3,
        window_size=24,
        scale_prior_mean=2.5,
        scale_prior_sd=0.5,
        conv_embed=(16, 32, 32, 64),
        composition="over",
    )
    return DatasetRecipe(Recipe(air, Recipe.fast().optim), MultiDSpritesConfig(), 10_000)


def _scattered_mnist() -> DatasetRecipe:
    """48x48 canvases with 1-5 digits of 14x14: one step per digit, windows of 14 px (scale
    prior 48 / 14 = 3.4, sd 0.1: every digit has the same size, and a window grown over two
    digits costs more), a 14x14 glimpse (the digits' own resolution), the ``fast`` recipe, and
    a count prior that starts weak and grows: k = 0.3 (each object costs 1.2 nats; with the
    ``fast`` 0.01 the model stayed at one object per scene), decayed from step 2,000 to step 8,000
    to a per-step presence probability of 0.02 (against empty windows the weak prior left);
    DAIR's recurrent input, the image minus the reconstruction so far, with the glimpse still
    cropped from the image (held-out accuracy 83.9-86.4% in 3 seeds, AIR 78.3-84.2%, on scenes
    without an overlap bound, 2026-12-05); 14,000 steps, the last 4,000 with parameter averaging
    (decay 0.999). The scenes are SPAIR's (``ScatteredMNISTConfig``'s default overlap bound):
    89.1-91.6% of held-out scenes in 3 seeds, 90.1-91.2% by the count posterior (sd 0.2 and
    10,000 steps without averaging: 88.3-89.8%; averaged to 14,000: 89.6-90.1%; 2026-12-05)."""
    data = ScatteredMNISTConfig()
    air = Recipe.fast().air.replace(
        compute_dtype="float32",  # the precision its results were measured in
        guide_input="difference",
        image_size=data.canvas_size,
        num_steps=data.max_digits,
        window_size=data.digit_size,
        scale_prior_mean=3.4,
        scale_prior_sd=0.1,
        z_pres_prior=0.3,
        anneal_prior="exp",
        anneal_prior_to=0.02,
        anneal_prior_begin=2_000,
        anneal_prior_duration=6_000,
    )
    optim = dataclasses.replace(Recipe.fast().optim, average_decay=0.999, average_start=10_000)
    return DatasetRecipe(Recipe(air, optim), data, 14_000)


# The recipe of each generated benchmark, for ``numpyro-air train --dataset NAME``.
DATASET_RECIPES: Mapping[str, DatasetRecipe] = MappingProxyType(
    {
        "multi-mnist": DatasetRecipe(Recipe.fast(), MultiMNISTConfig(), 20_000),
        "multi-dsprites": _multi_dsprites(),
        "scattered-mnist": _scattered_mnist(),
    }
)
