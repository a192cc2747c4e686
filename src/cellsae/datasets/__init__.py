"""Synthetic worlds with known truth, and loaders for public reference data.

Each module appends its public names below (one import line per module).
"""
from .world import GENOTYPES, FACTOR_NAMES, NeuronWorld, WorldTruth, neuron_world, write_neuron_world
from .plates import write_world_plates
from .toy import ToySuperposition, toy_superposition
from .paired import PairedDataset, load_gouwens2020, load_scgem, load_snareseq
