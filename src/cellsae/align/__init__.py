"""GW-map: Gromov–Wasserstein alignment of cells across modalities with no shared features.

Pure array functions: cost matrices (``costs``), entropic / fused / unbalanced GW in torch
(``solvers``), a landmark (quantised) GW for 100k cells (``landmark``), label-free
hyperparameter selection (``selection``) and the ``GWResult`` object (``result``).
"""

from .costs import (CostInfo, cosine_cost, euclidean_cost, knn_geodesic_cost, normalize_cost,
                    pairwise_cost)
from .result import FactorizedCoupling, GWResult, load_result
from .solvers import ConvergenceWarning, entropic_gw, gw_objective

__all__ = [
    "ConvergenceWarning", "CostInfo", "FactorizedCoupling", "GWResult", "cosine_cost",
    "entropic_gw", "euclidean_cost", "gw_objective", "knn_geodesic_cost", "load_result",
    "normalize_cost", "pairwise_cost",
]

from .landmark import landmark_gw, quantize  # noqa: E402
from .selection import CRITERIA, distortion_score, select_gw  # noqa: E402

__all__ += ["CRITERIA", "distortion_score", "landmark_gw", "quantize", "select_gw"]

from .costs import multiscale_geodesic_cost  # noqa: E402

__all__ += ["multiscale_geodesic_cost"]

from .refine import refine_gw  # noqa: E402

__all__ += ["refine_gw"]
