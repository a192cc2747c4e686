"""AnnData-in / AnnData-out analysis, following scanpy's conventions.

Each module appends its public names below (one import line per module).
"""
from .latents import latents_anndata, latent_stats, pca_latents, cluster_latents, dpt_root, dpt_distances, pseudotime, phate
from .differential import rank_features, pseudobulk_test, differential_features, count_significant, benjamini_hochberg
from .annotate import annotate_latents, top_cells
from .compare import compare_representations
from .pathways import gene_modules, get_hierarchy, module_scores, map_module_scores, module_latent_correlation
from .sae import sae_encode
from .pathways import pathway_activity
from .align import gw_map
from .latents import neighbors, token_codes
from .annotate import token_activation_maps
from .paper import paper_analysis, paper_geometry, paper_trajectory, paper_volcano
