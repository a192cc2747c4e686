"""The synthetic neuron world: donors, genotypes, a branching progression, nested gene
programs, cell death, and two measurements of every cell state (images and RNA counts),
with all hidden variables kept as truth. See ``docs/synthetic_world.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .._utils import SeedLike, atomic_path, atomic_write_text, progress
from ..crops import CROPS_KEY, H5scWriter, read_h5sc
from .render import CHANNELS, add_nuisance, render_cells

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
GENOTYPES = ("healthy", "SNCA", "LRRK2", "GBA")

# Visual factors and how the latent state drives them. State columns:
# t, b1 (progress on branch 1), b2, SNCA, LRRK2, GBA, dead. A bias sets the baseline.
FACTOR_NAMES = (
    "mito_count", "mito_length", "mito_fragmentation", "mito_perinuclear", "mito_intensity",
    "lyso_count", "lyso_size", "lyso_brightness", "lyso_clustering",
    "nuclear_area", "nuclear_eccentricity", "nuclear_condensation", "nuclear_fragmentation",
    "nuclear_intensity", "soma_size", "soma_intensity",
    "neurite_count", "neurite_length", "neurite_branching", "neurite_thickness",
    "death_dye",
)
_STATE_COLUMNS = ("t", "b1", "b2", "SNCA", "LRRK2", "GBA", "dead")
_FACTOR_STATE = {  # factor: ({state column: loading}, bias)
    "mito_count": ({"t": -1.2}, 0.3),
    "mito_length": ({"t": -1.4, "SNCA": -0.8}, 0.5),
    "mito_fragmentation": ({"t": 1.4, "LRRK2": 1.0, "dead": 1.5}, -1.0),
    "mito_perinuclear": ({"b1": 2.0}, -0.5),
    "mito_intensity": ({"t": -1.2, "GBA": -0.7}, 0.6),
    "lyso_count": ({"t": 0.8, "GBA": 1.2}, -0.6),
    "lyso_size": ({"GBA": 1.2, "b2": 1.5}, -0.8),
    "lyso_brightness": ({"LRRK2": 1.0}, -0.2),
    "lyso_clustering": ({"b2": 2.0}, -0.6),
    "nuclear_area": ({"t": -0.5, "dead": -1.2}, 0.2),
    "nuclear_eccentricity": ({}, 0.0),
    "nuclear_condensation": ({"t": 0.6, "dead": 3.0}, -1.6),
    "nuclear_fragmentation": ({"dead": 3.2}, -3.2),
    "nuclear_intensity": ({}, 0.0),
    "soma_size": ({"t": -0.8, "b1": 1.0}, 0.2),
    "soma_intensity": ({}, 0.0),
    "neurite_count": ({"t": -1.0}, 0.4),
    "neurite_length": ({"t": -1.4, "b2": -1.0, "dead": -1.5}, 0.8),
    "neurite_branching": ({"t": -0.8, "b1": 1.2}, 0.0),
    "neurite_thickness": ({}, 0.0),
    "death_dye": ({"dead": 5.0, "t": 0.5}, -3.2),
}

# Planted 3-level module hierarchy: 3 ⊃ 7 ⊃ 17.
_LEVEL2_PARENTS = (0, 0, 1, 1, 2, 2, 2)
_LEVEL3_PARENTS = (0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5, 6, 6, 6)
_N_MODULES = (3, 7, 17)
_BRANCH_POINT = 0.45
_RENDER_BLOCK = 64
# Each level's own term of a program = a state-driven part (shared by every measurement of
# the cell, so images and RNA share geometry through it) + cell-level noise (a program's
# own fluctuation). Both parts are nested, so gene-gene correlation steps down level by
# level; the state parts of all 27 terms are decorrelated over the state distribution, so
# the state alone already carries the hierarchy (what a GW-imputed expression can show).
_LEVEL_STATE = (1.0, 0.85, 1.0)
_LEVEL_NOISE = (0.4, 0.45, 0.75)
# Neuronal subtypes of the culture (discrete states both modalities express).
CELL_TYPES = ("dopaminergic", "glutamatergic", "GABAergic", "immature")
_CELL_TYPE_PROPORTIONS = (0.4, 0.27, 0.2, 0.13)
# positions of the cell types in a shared 3-d type space (marker genes and morphology are
# both read out of it): glutamatergic and GABAergic are close, immature cells nearest to
# glutamatergic ones, dopaminergic far from all; no two pairs of types are equally far
# apart, so the type layout has no mirror image
_TYPE_EMBEDDING = np.array([[1.5, 0.0, 0.0], [0.0, 1.0, 0.3], [0.0, 0.8, -0.5],
                            [-0.3, 0.3, 1.2]])
# immature cells progress less; dopaminergic cells die earlier (as in Parkinson's disease)
_TYPE_T_SCALE = (1.0, 1.0, 1.0, 0.6)
_TYPE_DEATH_SHIFT = (-0.1, 0.0, 0.05, 0.1)
# the trajectory, the fates and death are the strongest visual phenotypes (loadings of
# _FACTOR_STATE are multiplied by these), as they are the strongest RNA signals
_FACTOR_GAIN = {"t": 4.0, "b1": 4.0, "b2": 4.0, "dead": 1.1}
# visual factors that carry the cell type (morphology and stain intensities)
_TYPE_FACTORS = ("soma_size", "soma_intensity", "neurite_thickness", "nuclear_area",
                 "nuclear_eccentricity", "nuclear_intensity", "lyso_brightness",
                 "neurite_branching")


@dataclass(frozen=True)
class WorldParams:
    """Arguments of :func:`neuron_world`, kept with the truth."""

    n_cells: int = 2000
    seed: int = 0
    crop_size: int = 64
    n_rna_cells: int | None = None
    genotype_proportions: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)
    rna_genotype_proportions: tuple[float, ...] | None = None
    donors_per_genotype: int = 3
    n_plates: int = 2
    design: str = "balanced"
    genes_per_module: int = 12
    n_background_genes: int = 800
    n_invisible_programs: int = 6
    mean_library_size: float = 3000.0


@dataclass
class WorldTruth:
    """Everything hidden: names, the module hierarchy, which programs images can see,
    and the pairing of imaged cells with sequenced cells."""

    factor_names: list[str]
    program_names: list[str]
    program_visible: np.ndarray            # (17,) bool
    hierarchy: dict                        # {"levels": [...], "parents": {...}, "genes": {...}}
    genotypes: list[str]
    donors: list[str]
    pairing: np.ndarray                    # (n_cells,) RNA row of each image cell, -1 if none
    factor_loadings: np.ndarray            # (n_factors, n_programs) program → factor loadings
    params: dict = field(default_factory=dict)
    cell_types: list[str] = field(default_factory=lambda: list(CELL_TYPES))

    def to_json(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "factor_names": self.factor_names,
            "program_names": self.program_names,
            "program_visible": [bool(v) for v in self.program_visible],
            "hierarchy": self.hierarchy,
            "genotypes": self.genotypes,
            "donors": self.donors,
            "cell_types": self.cell_types,
            "params": self.params,
        }


# -- structure ----------------------------------------------------------------------------


@dataclass
class _Structure:
    donors: list[str]
    donor_genotype: np.ndarray       # (n_donors,) genotype index
    donor_effect: np.ndarray         # (n_donors, 4)
    donor_t_shift: np.ndarray        # (n_donors,)
    term_center: np.ndarray          # (27,) trajectory position of each term's expression wave
    term_width: np.ndarray           # (27,)
    term_branch: np.ndarray          # (27,) 0 = both fates, 1 / 2 = that fate only
    term_type: np.ndarray            # (27, n_types) cell-type offsets
    term_type_gain: np.ndarray       # (27, n_types) cell-type gain of the wave
    term_genotype: np.ndarray        # (27, 3) SNCA / LRRK2 / GBA shifts
    term_donor: np.ndarray           # (27, 4) small donor effects
    term_mean: np.ndarray            # (27,) centring of the raw state features
    term_whiten: np.ndarray          # (27, 27) decorrelation of the state features
    program_names: list[str]
    level_names: list[list[str]]
    program_visible: np.ndarray
    factor_state: np.ndarray          # (n_factors, n_state)
    factor_type: np.ndarray           # (n_factors, n_types)
    factor_bias: np.ndarray
    factor_programs: np.ndarray       # (n_factors, 17)
    gene_names: np.ndarray
    gene_module: np.ndarray           # (n_genes,) level-3 index or -1
    gene_base: np.ndarray
    gene_program_weight: np.ndarray   # (n_genes, 3) weights on level-1/2/3 activity
    gene_state: np.ndarray            # (n_genes, n_state) t/branch/genotype/dead effects
    gene_type: np.ndarray             # (n_genes, n_types) cell-type markers
    gene_donor: np.ndarray            # (n_genes, 4)
    plate_gain: np.ndarray            # (n_plates, 4)
    plate_offset: np.ndarray          # (n_plates, 4)
    donor_gain: np.ndarray            # (n_donors, 4)


def _term_features(st: _Structure, t, branch, cell_type, genotype, donor) -> np.ndarray:
    """Raw state-driven part of the 27 program terms: (n, 27), not yet decorrelated.

    A term is an expression wave along the trajectory (a bump at ``term_center`` on one or
    both fates), scaled per cell type, plus cell-type, genotype and donor offsets.
    """
    on = (st.term_branch[None, :] == 0) | (branch[:, None] == st.term_branch[None, :]) \
        | (t[:, None] < _BRANCH_POINT)
    wave = np.exp(-0.5 * ((t[:, None] - st.term_center) / st.term_width) ** 2) * on
    onehot = np.eye(len(GENOTYPES))[genotype][:, 1:]
    return (wave * st.term_type_gain.T[cell_type] + st.term_type.T[cell_type]
            + onehot @ st.term_genotype.T + st.donor_effect[donor] @ st.term_donor.T)


def _build_structure(params: WorldParams, rng: np.random.Generator) -> _Structure:
    donors, donor_genotype = [], []
    for g, name in enumerate(GENOTYPES):
        for d in range(params.donors_per_genotype):
            donors.append(f"{name}-d{d + 1}")
            donor_genotype.append(g)
    n_donors = len(donors)
    donor_effect = rng.normal(0, 1, (n_donors, 4))
    donor_t_shift = rng.normal(0, 0.05, n_donors)
    n_types = len(CELL_TYPES)

    n_terms = sum(_N_MODULES)
    term_center = rng.uniform(0.0, 1.0, n_terms)
    term_width = rng.uniform(0.12, 0.3, n_terms)
    term_branch = np.where(term_center > _BRANCH_POINT, rng.integers(0, 3, n_terms), 0)
    term_type = rng.normal(0, 0.6, (n_terms, n_types))
    term_type_gain = np.exp(rng.normal(0, 0.5, (n_terms, n_types))) * rng.choice([-1, 1], (n_terms, 1))
    term_genotype = rng.normal(0, 0.25, (n_terms, 3))
    term_donor = rng.normal(0, 0.05, (n_terms, 4))

    level1 = [f"P{i + 1}" for i in range(3)]
    level2 = [f"{level1[p]}.{sum(1 for q in _LEVEL2_PARENTS[:i] if q == p) + 1}"
              for i, p in enumerate(_LEVEL2_PARENTS)]
    level3 = [f"{level2[p]}.{sum(1 for q in _LEVEL3_PARENTS[:i] if q == p) + 1}"
              for i, p in enumerate(_LEVEL3_PARENTS)]
    n_prog = len(level3)
    invisible = rng.choice(n_prog, params.n_invisible_programs, replace=False)
    visible = np.ones(n_prog, bool)
    visible[invisible] = False

    n_f = len(FACTOR_NAMES)
    factor_state = np.zeros((n_f, len(_STATE_COLUMNS)))
    factor_bias = np.zeros(n_f)
    for i, name in enumerate(FACTOR_NAMES):
        loads, bias = _FACTOR_STATE[name]
        for col, w in loads.items():
            factor_state[i, _STATE_COLUMNS.index(col)] = w * _FACTOR_GAIN.get(col, 1.0)
        factor_bias[i] = bias
    # both measurements read the cell type out of one shared type space, so the distances
    # between types (glutamatergic near GABAergic, immature far from all) agree
    factor_type = np.zeros((n_f, n_types))
    rows = [FACTOR_NAMES.index(name) for name in _TYPE_FACTORS]
    # an orthonormal readout: type-to-type distances in factor space are the type space's
    readout, _ = np.linalg.qr(rng.normal(0, 1, (len(rows), _TYPE_EMBEDDING.shape[1])))
    factor_type[rows] = 6.0 * readout @ (_TYPE_EMBEDDING - _TYPE_EMBEDDING.mean(0)).T
    # each visible program drives two factors; programs share factors (superposition)
    factor_programs = np.zeros((n_f, n_prog))
    skip = {FACTOR_NAMES.index("death_dye"), FACTOR_NAMES.index("nuclear_fragmentation")}
    targets = [i for i in range(n_f) if i not in skip]
    order = rng.permutation(targets)
    for j, prog in enumerate(np.flatnonzero(visible)):
        for r in range(2):
            f = order[(2 * j + r) % len(order)]
            factor_programs[f, prog] = rng.choice([-1, 1]) * rng.uniform(0.65, 0.9)

    # genes: module genes follow their programs; background genes mark cell types, track
    # the trajectory, fates, death, genotype or donor, or nothing
    n_mod_genes = n_prog * params.genes_per_module
    n_genes = n_mod_genes + params.n_background_genes
    gene_module = np.full(n_genes, -1)
    gene_module[:n_mod_genes] = np.repeat(np.arange(n_prog), params.genes_per_module)
    gene_base = np.concatenate([rng.normal(np.log(1.0), 0.4, n_mod_genes),
                                rng.normal(np.log(0.05), 1.0, params.n_background_genes)])
    weight = np.zeros((n_genes, 3))
    weight[:n_mod_genes] = rng.uniform(0.38, 0.53, (n_mod_genes, 1))
    n_state = len(_STATE_COLUMNS)
    gene_state = np.zeros((n_genes, n_state))
    gene_type = np.zeros((n_genes, n_types))
    gene_donor = np.zeros((n_genes, 4))
    bg = np.arange(n_mod_genes, n_genes)
    kind = rng.random(len(bg))
    marker = bg[kind < 0.15]
    gene_base[marker] = rng.normal(np.log(0.3), 0.5, len(marker))
    loadings = rng.normal(0, 1.0, (len(marker), _TYPE_EMBEDDING.shape[1]))
    gene_type[marker] = 1.3 * np.clip(loadings @ _TYPE_EMBEDDING.T, -0.5, None)
    traj = bg[(kind >= 0.15) & (kind < 0.30)]
    gene_base[traj] = rng.normal(np.log(0.25), 0.5, len(traj))
    which = rng.integers(0, 3, len(traj))  # t, b1 or b2
    gene_state[traj, which] = rng.choice([-1, 1], len(traj)) * rng.uniform(2.5, 5.5, len(traj))
    death = bg[(kind >= 0.30) & (kind < 0.40)]
    gene_base[death] = rng.normal(np.log(0.15), 0.5, len(death))
    gene_state[death, _STATE_COLUMNS.index("dead")] = rng.uniform(2.0, 3.2, len(death))
    g_genes = bg[(kind >= 0.40) & (kind < 0.47)]
    gene_state[g_genes, 3 + rng.integers(0, 3, len(g_genes))] = rng.uniform(0.6, 1.2, len(g_genes))
    d_genes = bg[(kind >= 0.47) & (kind < 0.50)]
    gene_donor[d_genes] = rng.normal(0, 0.5, (len(d_genes), 4))
    perm = rng.permutation(n_genes)  # genes are not listed module by module
    gene_names = np.array([f"GENE{i:04d}" for i in range(n_genes)])

    st = _Structure(
        donors=donors, donor_genotype=np.array(donor_genotype), donor_effect=donor_effect,
        donor_t_shift=donor_t_shift, term_center=term_center, term_width=term_width,
        term_branch=term_branch, term_type=term_type, term_type_gain=term_type_gain,
        term_genotype=term_genotype, term_donor=term_donor, term_mean=np.zeros(n_terms),
        term_whiten=np.eye(n_terms), program_names=level3,
        level_names=[level1, level2, level3], program_visible=visible,
        factor_state=factor_state, factor_type=factor_type, factor_bias=factor_bias,
        factor_programs=factor_programs,
        gene_names=gene_names, gene_module=gene_module[perm], gene_base=gene_base[perm],
        gene_program_weight=weight[perm], gene_state=gene_state[perm],
        gene_type=gene_type[perm], gene_donor=gene_donor[perm],
        plate_gain=np.exp(rng.normal(0, 0.12, (params.n_plates, 4))),
        plate_offset=rng.uniform(0.01, 0.04, (params.n_plates, 4)),
        donor_gain=np.exp(rng.normal(0, 0.08, (n_donors, 4))),
    )
    # decorrelate the 27 state-driven terms over a reference sample of states (balanced
    # genotypes), so that no two modules share state-driven variation by accident; the
    # whitening is the symmetric one (each term stays closest to its own wave)
    ref = _draw_state(st, 4000, (0.25, 0.25, 0.25, 0.25), rng)
    raw = _term_features(st, ref["t"], ref["branch"], ref["cell_type"], ref["genotype"],
                         ref["donor"])
    st.term_mean = raw.mean(0)
    cov = np.cov(raw, rowvar=False)
    evals, evecs = np.linalg.eigh(cov)
    evals = np.maximum(evals, 0) + 0.02 * evals.mean()
    st.term_whiten = (evecs / np.sqrt(evals)) @ evecs.T
    return st


# -- cell states --------------------------------------------------------------------------


_T_BETA = {"healthy": (2.0, 5.0), "SNCA": (4.0, 2.5), "LRRK2": (3.0, 3.0), "GBA": (3.5, 3.0)}
_P_BRANCH1 = {"healthy": 0.5, "SNCA": 0.8, "LRRK2": 0.3, "GBA": 0.6}
_DEATH_T0 = {"healthy": 0.85, "SNCA": 0.6, "LRRK2": 0.7, "GBA": 0.65}


def _draw_state(st: _Structure, n: int, proportions: Sequence[float],
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Genotype, donor, cell type, trajectory position and fate of n cells."""
    geno = rng.choice(len(GENOTYPES), n, p=np.asarray(proportions) / np.sum(proportions))
    per_geno = np.stack([np.flatnonzero(st.donor_genotype == g) for g in range(len(GENOTYPES))])
    donor = per_geno[geno, rng.integers(0, per_geno.shape[1], n)].astype(int)
    a = np.array([_T_BETA[GENOTYPES[g]][0] for g in range(len(GENOTYPES))])[geno]
    b = np.array([_T_BETA[GENOTYPES[g]][1] for g in range(len(GENOTYPES))])[geno]
    cell_type = rng.choice(len(CELL_TYPES), n, p=np.asarray(_CELL_TYPE_PROPORTIONS))
    t = np.clip(rng.beta(a, b) * np.asarray(_TYPE_T_SCALE)[cell_type] + st.donor_t_shift[donor],
                0, 1)
    p1 = np.array([_P_BRANCH1[g] for g in GENOTYPES])[geno]
    fate = np.where(rng.random(n) < p1, 1, 2)
    branch = np.where(t < _BRANCH_POINT, 0, fate)
    return {"genotype": geno, "donor": donor, "t": t, "branch": branch, "cell_type": cell_type}


def _sample_states(st: _Structure, n: int, proportions: Sequence[float],
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw n latent cell states: genotype, donor, cell type, t, branch, programs, dead."""
    s = _draw_state(st, n, proportions, rng)
    geno, t, branch = s["genotype"], s["t"], s["branch"]
    progress_on_branch = np.clip((t - _BRANCH_POINT) / (1 - _BRANCH_POINT), 0, 1)
    b1 = np.where(branch == 1, progress_on_branch, 0.0)
    b2 = np.where(branch == 2, progress_on_branch, 0.0)
    onehot = np.eye(len(GENOTYPES))[geno][:, 1:]
    raw = _term_features(st, t, branch, s["cell_type"], geno, s["donor"])
    driven = (raw - st.term_mean) @ st.term_whiten
    bounds = np.cumsum((0,) + _N_MODULES)
    acts, own_terms = [], []
    for level, parents in enumerate(((0, 0, 0), _LEVEL2_PARENTS, _LEVEL3_PARENTS)):
        own = _LEVEL_STATE[level] * driven[:, bounds[level]:bounds[level + 1]] \
            + rng.normal(0, _LEVEL_NOISE[level], (n, len(parents)))
        own_terms.append(own)
        acts.append(own if level == 0 else acts[-1][:, list(parents)] + own)
    t0 = np.array([_DEATH_T0[g] for g in GENOTYPES])[geno] \
        + np.asarray(_TYPE_DEATH_SHIFT)[s["cell_type"]]
    p_dead = 0.75 / (1 + np.exp(-(t - t0) * 10)) + 0.02
    dead = rng.random(n) < p_dead
    return {**s, "b1": b1, "b2": b2,
            "state": np.column_stack([t, b1, b2, onehot, dead]), "dead": dead,
            "level_acts": own_terms, "programs": acts[2]}


def _factors(st: _Structure, states: dict, rng: np.random.Generator) -> np.ndarray:
    """(n, n_factors) visual factors in [0, 1] from the latent state."""
    progs = states["programs"]
    progs = (progs - progs.mean(0)) / (progs.std(0) + 1e-9) if len(progs) > 1 else progs
    z = states["state"] @ st.factor_state.T + st.factor_type.T[states["cell_type"]] \
        + progs @ st.factor_programs.T + st.factor_bias
    z += rng.normal(0, 0.3, z.shape)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def _rna_counts(st: _Structure, states: dict, params: WorldParams,
                rng: np.random.Generator) -> sparse.csr_matrix:
    """Negative-binomial counts (n, n_genes) with varying library size."""
    n = len(states["t"])
    mod = st.gene_module
    has = mod >= 0
    l3 = np.where(has, mod, 0)
    l2 = np.array(_LEVEL3_PARENTS)[l3]
    l1 = np.array(_LEVEL2_PARENTS)[l2]
    a1, a2, a3 = states["level_acts"]
    prog = (a1[:, l1] * st.gene_program_weight[:, 0] + a2[:, l2] * st.gene_program_weight[:, 1]
            + a3[:, l3] * st.gene_program_weight[:, 2]) * has
    log_mu = st.gene_base + prog + states["state"] @ st.gene_state.T \
        + st.gene_type.T[states["cell_type"]] + st.donor_effect[states["donor"]] @ st.gene_donor.T
    # dying cells lose RNA: fewer counts, on top of the usual capture variation
    size_factor = np.exp(rng.normal(0, 0.35, n) - 0.5 * states["dead"]) \
        * params.mean_library_size / 5000.0
    mu = np.exp(np.clip(log_mu, -10, 6)) * size_factor[:, None]
    theta = 2.0
    lam = rng.gamma(theta, mu / theta)
    return sparse.csr_matrix(rng.poisson(lam).astype(np.float32))


# -- assembling AnnData -------------------------------------------------------------------


def _layout(st: _Structure, states: dict, params: WorldParams, rng) -> pd.DataFrame:
    """Plate, well and field of each imaged cell."""
    n = len(states["donor"])
    if params.design == "balanced":
        plate = rng.integers(0, params.n_plates, n)
    elif params.design == "confounded":  # each genotype on its own plate, as in the paper
        plate = states["genotype"] % params.n_plates
    else:
        raise ValueError(f"design must be 'balanced' or 'confounded', got {params.design!r}")
    rows = "BCDEFGHIJKLMNO"
    # one well per (donor, plate): row from the donor, column from the plate
    well_row = states["donor"] % len(rows)
    well_col = 2 + states["donor"] // len(rows) * params.n_plates + plate
    well = np.array([f"{rows[r]}{c:02d}" for r, c in zip(well_row, well_col, strict=True)]) \
        if n else np.zeros(0, str)
    return pd.DataFrame({"plate": [f"plate{p + 1}" for p in plate], "well": well})


def _cells_obs(st: _Structure, states: dict, params: WorldParams, rng, prefix: str) -> pd.DataFrame:
    n = len(states["t"])
    obs = pd.DataFrame({
        "genotype": pd.Categorical([GENOTYPES[g] for g in states["genotype"]], categories=GENOTYPES),
        "donor": pd.Categorical([st.donors[d] for d in states["donor"]], categories=st.donors),
        "t": states["t"].astype(np.float32),
        "branch": states["branch"].astype(np.int8),
        "dead": states["dead"].astype(bool),
        "cell_type": pd.Categorical([CELL_TYPES[c] for c in states["cell_type"]],
                                    categories=CELL_TYPES),
    }, index=[f"{prefix}{i}" for i in range(n)])
    return obs


def _var(st: _Structure) -> pd.DataFrame:
    mod = st.gene_module
    names = st.level_names

    def level(i: int) -> list[str]:
        idx = mod.copy()
        out = []
        for m in idx:
            if m < 0:
                out.append("")
                continue
            l3 = m
            l2 = _LEVEL3_PARENTS[l3]
            l1 = _LEVEL2_PARENTS[l2]
            out.append(names[i][(l1, l2, l3)[i]])
        return out

    return pd.DataFrame({
        "module_level1": level(0), "module_level2": level(1), "module_level3": level(2),
        "program_visible": [bool(m >= 0 and st.program_visible[m]) for m in mod],
    }, index=st.gene_names)


def _hierarchy(st: _Structure, var: pd.DataFrame) -> dict:
    levels = st.level_names
    parents = {
        "level2": {levels[1][i]: levels[0][p] for i, p in enumerate(_LEVEL2_PARENTS)},
        "level3": {levels[2][i]: levels[1][p] for i, p in enumerate(_LEVEL3_PARENTS)},
    }
    genes = {}
    for lv in (1, 2, 3):
        col = var[f"module_level{lv}"]
        genes[f"level{lv}"] = {m: list(col.index[col == m]) for m in levels[lv - 1]}
    return {"levels": levels, "parents": parents, "genes": genes}


def _crop_nuisance_params(st: _Structure, states: dict, plate_idx: np.ndarray, rng):
    n = len(plate_idx)
    gain = st.plate_gain[plate_idx] * st.donor_gain[states["donor"]]
    offset = st.plate_offset[plate_idx]
    blur = rng.uniform(0.4, 1.1, n).astype(np.float32)
    return gain.astype(np.float32), offset.astype(np.float32), blur


class NeuronWorld:
    """A synthetic culture: ``cells`` (imaged, crops format), ``rna`` and ``truth``."""

    def __init__(self, cells: ad.AnnData, rna: ad.AnnData, truth: WorldTruth):
        self.cells = cells
        self.rna = rna
        self.truth = truth

    def __repr__(self) -> str:
        return (f"NeuronWorld({self.cells.n_obs} imaged cells, {self.rna.n_obs} RNA cells × "
                f"{self.rna.n_vars} genes, {len(self.truth.factor_names)} visual factors)")

    def write(self, path: str | Path) -> Path:
        """Write ``cells.h5sc``, ``rna.h5ad``, ``truth.json`` and ``truth.npz`` into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        from ..crops import write_h5sc

        write_h5sc(path / "cells.h5sc", self.cells)
        with atomic_path(path / "rna.h5ad") as tmp:
            self.rna.write_h5ad(tmp)
        _write_truth(path, self.truth)
        return path

    @classmethod
    def read(cls, path: str | Path, *, load_crops: bool = True) -> NeuronWorld:
        """Read a world written by :meth:`write` (or ``cellsae synth``)."""
        path = Path(path)
        for name in ("cells.h5sc", "rna.h5ad", "truth.json", "truth.npz"):
            if not (path / name).exists():
                raise FileNotFoundError(f"'{path / name}' is missing: '{path}' is not a world "
                                        "folder written by NeuronWorld.write or `cellsae synth`")
        cells = read_h5sc(path / "cells.h5sc", load_crops=load_crops)
        rna = ad.read_h5ad(path / "rna.h5ad")
        meta = json.loads((path / "truth.json").read_text())
        arrays = np.load(path / "truth.npz", allow_pickle=False)
        truth = WorldTruth(
            factor_names=meta["factor_names"], program_names=meta["program_names"],
            program_visible=np.asarray(meta["program_visible"], bool),
            hierarchy=meta["hierarchy"], genotypes=meta["genotypes"], donors=meta["donors"],
            pairing=arrays["pairing"], factor_loadings=arrays["factor_loadings"],
            params=meta["params"], cell_types=meta.get("cell_types", list(CELL_TYPES)),
        )
        return cls(cells, rna, truth)


def _write_truth(path: Path, truth: WorldTruth) -> None:
    atomic_write_text(path / "truth.json", json.dumps(truth.to_json(), indent=1))
    with atomic_path(path / "truth.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, pairing=truth.pairing, factor_loadings=truth.factor_loadings)


def _validate(params: WorldParams) -> None:
    if params.n_cells < 1:
        raise ValueError(f"n_cells must be a positive integer, got {params.n_cells}")
    if params.crop_size < 32:
        raise ValueError(f"crop_size must be at least 32 pixels (a neuron needs room), "
                         f"got {params.crop_size}")
    if params.n_rna_cells is not None and params.n_rna_cells < 1:
        raise ValueError(f"n_rna_cells must be positive or None, got {params.n_rna_cells}")
    for name in ("genotype_proportions", "rna_genotype_proportions"):
        props = getattr(params, name)
        if props is None:
            continue
        if len(props) != len(GENOTYPES):
            raise ValueError(f"{name} needs one value per genotype {GENOTYPES}, got {props}")
        if min(props) < 0 or sum(props) <= 0:
            raise ValueError(f"{name} must be non-negative with a positive sum, got {props}")
    if params.donors_per_genotype < 1:
        raise ValueError(f"donors_per_genotype must be >= 1, got {params.donors_per_genotype}")
    if params.n_plates < 1:
        raise ValueError(f"n_plates must be >= 1, got {params.n_plates}")
    if params.design not in ("balanced", "confounded"):
        raise ValueError(f"design must be 'balanced' or 'confounded', got {params.design!r}")
    if not 0 <= params.n_invisible_programs <= 17:
        raise ValueError(f"n_invisible_programs must be in [0, 17], got {params.n_invisible_programs}")
    if params.genes_per_module < 2 or params.n_background_genes < 0:
        raise ValueError("genes_per_module must be >= 2 and n_background_genes >= 0")


def _proportions(value, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        unknown = set(value) - set(GENOTYPES)
        if unknown:
            raise ValueError(f"unknown genotype(s) {sorted(unknown)} in {name}; "
                             f"known: {list(GENOTYPES)}")
        return tuple(float(value.get(g, 0.0)) for g in GENOTYPES)
    return tuple(float(v) for v in value)


class _Generator:
    """Shared machinery for in-memory and streamed worlds."""

    def __init__(self, params: WorldParams):
        _validate(params)
        self.params = params
        seeds = np.random.SeedSequence(params.seed).spawn(4)
        self.structure = _build_structure(params, np.random.default_rng(seeds[0]))
        self._state_rng = np.random.default_rng(seeds[1])
        self._rna_rng = np.random.default_rng(seeds[2])
        self._image_seed = seeds[3]

    def states(self):
        p = self.params
        st = self.structure
        img = _sample_states(st, p.n_cells, p.genotype_proportions, self._state_rng)
        paired = p.n_rna_cells in (None, p.n_cells) and p.rna_genotype_proportions is None
        if paired:
            rna_states = img
        else:
            n_rna = p.n_rna_cells or p.n_cells
            rna_states = _sample_states(st, n_rna, p.rna_genotype_proportions or
                                        p.genotype_proportions, self._state_rng)
        return img, rna_states, paired

    def rna(self, rna_states: dict, paired: bool) -> ad.AnnData:
        st = self.structure
        counts = _rna_counts(st, rna_states, self.params, self._rna_rng)
        obs = _cells_obs(st, rna_states, self.params, self._rna_rng, "rna")
        n = len(obs)
        obs["image_index"] = np.arange(n) if paired else -np.ones(n, int)
        var = _var(st)
        rna = ad.AnnData(X=counts, obs=obs, var=var)
        rna.obsm["programs"] = rna_states["programs"].astype(np.float32)
        rna.uns["program_names"] = list(st.program_names)
        return rna

    def truth(self, n_cells: int, paired: bool, var: pd.DataFrame) -> WorldTruth:
        st = self.structure
        return WorldTruth(
            factor_names=list(FACTOR_NAMES), program_names=list(st.program_names),
            program_visible=st.program_visible.copy(), hierarchy=_hierarchy(st, var),
            genotypes=list(GENOTYPES), donors=list(st.donors),
            pairing=np.arange(n_cells) if paired else -np.ones(n_cells, int),
            factor_loadings=st.factor_programs.astype(np.float32),
            params={k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in asdict(self.params).items()},
        )

    def cells_obs(self, states: dict, paired: bool) -> tuple[pd.DataFrame, np.ndarray]:
        st = self.structure
        rng = np.random.default_rng(self._image_seed.spawn(1)[0])
        obs = _cells_obs(st, states, self.params, rng, "cell")
        layout = _layout(st, states, self.params, rng)
        obs["plate"] = pd.Categorical(layout["plate"].to_numpy())
        obs["well"] = pd.Categorical(layout["well"].to_numpy())
        obs["rna_index"] = np.arange(len(obs)) if paired else -np.ones(len(obs), int)
        plate_idx = np.array([int(p[5:]) - 1 for p in layout["plate"]], int)
        return obs, plate_idx

    def factors(self, states: dict) -> np.ndarray:
        rng = np.random.default_rng(self._image_seed.spawn(2)[1])
        return _factors(self.structure, states, rng)

    def crops(self, states: dict, factors: np.ndarray, plate_idx: np.ndarray,
              chunk_size: int = 256, clean: bool = False):
        """Yield (start, crops) chunks: rendering + nuisances.

        Cells are rendered in fixed blocks of ``_RENDER_BLOCK`` with one random stream per
        block, so the pixels do not depend on ``chunk_size`` (in-memory and streamed worlds,
        and the plates, show the very same cells).
        """
        n = len(factors)
        root = np.random.SeedSequence(self._image_seed.entropy, spawn_key=(7,))
        block_seeds = root.spawn(-(-n // _RENDER_BLOCK))
        chunk_size = max(_RENDER_BLOCK, chunk_size // _RENDER_BLOCK * _RENDER_BLOCK)
        for start in range(0, n, chunk_size):
            stop = min(n, start + chunk_size)
            parts = []
            for b0 in range(start, stop, _RENDER_BLOCK):
                rng = np.random.default_rng(block_seeds[b0 // _RENDER_BLOCK])
                parts.append(self.render(states, factors, plate_idx,
                                         slice(b0, min(stop, b0 + _RENDER_BLOCK)), rng, clean))
            yield start, np.concatenate(parts)

    def render(self, states, factors, plate_idx, sl: slice, rng, clean: bool = False):
        sub = {k: v[sl] for k, v in states.items() if isinstance(v, np.ndarray)}
        params = {name: factors[sl, i] for i, name in enumerate(FACTOR_NAMES)}
        img = render_cells(params, self.params.crop_size, rng)
        if clean:
            return img
        gain, offset, blur = _crop_nuisance_params(self.structure, sub, plate_idx[sl], rng)
        return add_nuisance(img, rng, gain=gain, offset=offset, blur_sigma=blur)


def _params_from(n_cells, seed, crop_size, genotype_proportions, rna_genotype_proportions,
                 **kwargs) -> WorldParams:
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(0, 2**31))
    return WorldParams(
        n_cells=int(n_cells), seed=int(seed if seed is not None else 0), crop_size=int(crop_size),
        genotype_proportions=_proportions(genotype_proportions, "genotype_proportions"),
        rna_genotype_proportions=_proportions(rna_genotype_proportions, "rna_genotype_proportions"),
        **kwargs,
    )


def neuron_world(n_cells: int = 2000, *, seed: SeedLike = 0, crop_size: int = 64,
                 n_rna_cells: int | None = None,
                 genotype_proportions: Sequence[float] | dict = (0.25, 0.25, 0.25, 0.25),
                 rna_genotype_proportions: Sequence[float] | dict | None = None,
                 donors_per_genotype: int = 3, n_plates: int = 2, design: str = "balanced",
                 genes_per_module: int = 12, n_background_genes: int = 800,
                 n_invisible_programs: int = 6, chunk_size: int = 256) -> NeuronWorld:
    """Simulate a neuron culture with images, scRNA-seq and full ground truth, in memory.

    Parameters
    ----------
    n_cells : number of imaged cells.
    seed : int seed (or Generator); the same seed gives the same world.
    crop_size : side of the square crops (≥ 32; geometry scales with it).
    n_rna_cells : sequenced cells; None pairs RNA cell i with image cell i (same state,
        independent measurement). A different number, or ``rna_genotype_proportions``,
        draws RNA cells independently (the unpaired case; ``truth.pairing`` is −1).
    genotype_proportions : share of each of ``healthy, SNCA, LRRK2, GBA`` (sequence or dict).
    design : ``"balanced"`` (every donor on every plate) or ``"confounded"`` (each
        genotype on its own plate, as in the paper's lines).

    Returns
    -------
    NeuronWorld with ``cells`` (crops in ``obsm["single_cell_images"]``, true factors in
    ``obsm["factors"]``, programs in ``obsm["programs"]``), ``rna`` (raw counts) and ``truth``.
    For a million cells use :func:`write_neuron_world`, which streams crops to disk.
    """
    params = _params_from(n_cells, seed, crop_size, genotype_proportions,
                          rna_genotype_proportions, n_rna_cells=n_rna_cells,
                          donors_per_genotype=donors_per_genotype, n_plates=n_plates,
                          design=design, genes_per_module=genes_per_module,
                          n_background_genes=n_background_genes,
                          n_invisible_programs=n_invisible_programs)
    gen = _Generator(params)
    img_states, rna_states, paired = gen.states()
    rna = gen.rna(rna_states, paired)
    obs, plate_idx = gen.cells_obs(img_states, paired)
    factors = gen.factors(img_states)
    crops = np.empty((params.n_cells, 4, params.crop_size, params.crop_size), np.float16)
    for start, chunk in progress(gen.crops(img_states, factors, plate_idx, chunk_size),
                                 total=-(-params.n_cells // chunk_size), desc="rendering cells"):
        crops[start:start + len(chunk)] = chunk
    cells = _cells_anndata(gen, obs, img_states, factors)
    cells.obsm[CROPS_KEY] = crops
    truth = gen.truth(params.n_cells, paired, rna.var)
    logger.info("synthetic world: %d imaged cells, %d RNA cells", cells.n_obs, rna.n_obs)
    return NeuronWorld(cells, rna, truth)


def _cells_anndata(gen: _Generator, obs, states, factors) -> ad.AnnData:
    cells = ad.AnnData(obs=obs)
    cells.obsm["factors"] = factors
    cells.obsm["programs"] = states["programs"].astype(np.float32)
    cells.uns[CROPS_KEY] = {"channel_names": np.array(CHANNELS, dtype=object),
                            "image_size": gen.params.crop_size, "n_channels": len(CHANNELS)}
    cells.uns["factor_names"] = list(FACTOR_NAMES)
    cells.uns["program_names"] = list(gen.structure.program_names)
    return cells


def write_neuron_world(path: str | Path, n_cells: int = 2000, *, seed: SeedLike = 0,
                       crop_size: int = 64, chunk_size: int = 1024, **kwargs) -> Path:
    """Generate a world straight to disk, streaming crops in chunks (bounded memory).

    Writes the same files as :meth:`NeuronWorld.write`; use for very large worlds.
    Keyword arguments are those of :func:`neuron_world`.
    """
    params = _params_from(n_cells, seed, crop_size, kwargs.pop("genotype_proportions",
                          (0.25, 0.25, 0.25, 0.25)), kwargs.pop("rna_genotype_proportions", None),
                          **kwargs)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    gen = _Generator(params)
    img_states, rna_states, paired = gen.states()
    rna = gen.rna(rna_states, paired)
    obs, plate_idx = gen.cells_obs(img_states, paired)
    factors = gen.factors(img_states)
    meta = _cells_anndata(gen, obs, img_states, factors)
    uns = {k: v for k, v in meta.uns.items() if k != CROPS_KEY}
    with H5scWriter(path / "cells.h5sc", meta.obs, channel_names=CHANNELS,
                    crop_size=params.crop_size, uns=uns, obsm=dict(meta.obsm)) as writer:
        for start, chunk in progress(gen.crops(img_states, factors, plate_idx, chunk_size),
                                     total=-(-params.n_cells // chunk_size),
                                     desc="rendering cells", unit="chunk"):
            writer.write(chunk, start)
    with atomic_path(path / "rna.h5ad") as tmp:
        rna.write_h5ad(tmp)
    _write_truth(path, gen.truth(params.n_cells, paired, rna.var))
    return path
