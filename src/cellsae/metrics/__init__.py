"""Pure metric functions: arrays in, numbers out. No AnnData here.

Each module appends its public names below (one import line per module).
"""
from .geometry import KnnSdResult, MoransIResult, R2Result, knn_indices, knn_sd_ratio, morans_i, phenotype_r2, trustworthiness, continuity, effective_rank, linear_cka
from .truth import FactorMatch, factor_correlations, match_factors
from .segmentation import MatchResult, detection_f1, instance_iou, match_instances, segmentation_f1
from .sae import SAEReport, sae_report
from .alignment import foscttm, foscttm_from_scores, label_transfer_accuracy
from .paper import JTResult, jonckheere_terpstra, knn_indices_excluding, centroid_root, pseudotime_bins
