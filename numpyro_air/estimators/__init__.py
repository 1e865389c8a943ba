"""Gradient estimators for NumPyro models with discrete latents, generic (nothing here imports
AIR): NVIL with learned baselines and optional signal normalisation (:mod:`.nvil`), VIMCO
(:mod:`.vimco`), reweighted wake-sleep (:mod:`.rws`), the base class of the last two (:mod:`.particles`) and the
trace helpers they share (:mod:`.traces`)."""
