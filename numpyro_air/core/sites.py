"""Names of the guide's sites that other parts of the package rely on.

Every baseline parameter site starts with ``bl_`` (the optimiser gives them their own learning
rate); the NVIL baseline value of each step is the deterministic site ``z_pres_baseline``.
"""

BASELINE_PREFIX = "bl_"
BASELINE_SITE = "z_pres_baseline"


def is_baseline_param(name: str) -> bool:
    """True for parameter sites that belong to the baseline networks (own learning rate)."""
    return name.startswith(BASELINE_PREFIX)
