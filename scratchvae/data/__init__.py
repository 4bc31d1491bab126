"""Data: IDX files, named data sets (and where to find them), the built-in
synthetic digits, plain array files and binarisation."""
from .datasets import (DATASET_NAMES, Dataset, DatasetNotFoundError, binarize, find_dataset,
                       load_array_file, load_dataset)
from .download import download
from .idx import IDXError, read_idx, write_idx
from .synthetic import synthetic_digits

__all__ = ["DATASET_NAMES", "Dataset", "DatasetNotFoundError", "IDXError", "binarize", "download",
           "find_dataset", "load_array_file", "load_dataset", "read_idx", "synthetic_digits", "write_idx"]
