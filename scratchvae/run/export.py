"""Export: a trained VAE as one Python module that needs NumPy only, for embedding.

``export(model, directory)`` writes three files:

    NAME.py     the model's maps (encode, decode, sample, elbo): the template
                ``export_template.py`` with its docstring filled in; no scratchvae
    NAME.npz    the parameters, plain arrays under their scratchvae names
    NAME.json   the architecture the module reads, and where it came from

Each is written atomically, the module last; files of an earlier export are
replaced only when asked (``overwrite``). A model the template cannot compute
(a configuration key, likelihood, activation or parameter it does not know)
is refused with a message that names what.
"""
from __future__ import annotations

import io
import json
import keyword
import string
from pathlib import Path
from typing import List, Optional

import numpy as np

from .._version import __version__
from ..atomic import make_dirs, write_bytes
from ..kernels import ACTIVATIONS
from ..model import VAE
from ..model.likelihoods import LIKELIHOODS

TEMPLATE = Path(__file__).with_name("export_template.py")
FORMAT, FORMAT_VERSION = "scratchvae-export", 1
#: the configuration the exported module computes with
CONFIG_KEYS = ("input_dim", "hidden", "latent_dim", "likelihood", "activation", "sigma", "dtype", "context_dim")
#: options it computes at one value only: the prior N(0, I) and a Gaussian q without a flow
ONLY = {"prior": "standard", "flow": "none"}
#: options it has no use for: ``init`` only starts training, ``pseudo_inputs`` only serve the VampPrior
UNUSED = ("init", "pseudo_inputs")
#: modules the exported module imports: a module of the same name beside it would shadow them
IMPORTED = ("json", "math", "pathlib", "numpy")


def parameter_names(config: dict) -> List[str]:
    """The parameters the exported module reads for a model of ``config``."""
    layers = len(config["hidden"])
    names = [f"enc.{i}" for i in range(layers)] + ["enc.mu", "enc.logvar"] + [f"dec.{i}" for i in range(layers + 1)]
    names = [f"{layer}.{p}" for layer in names for p in ("W", "b")]
    return names + (["dec.log_sigma"] if config["likelihood"] in ("gaussian_scalar", "gaussian_pixel") else [])


def check_exportable(model) -> None:
    """A ValueError naming what the exported module could not compute, if anything."""
    if type(model) is not VAE:
        raise ValueError(f"export writes a plain or conditional VAE; this is a {type(model).__name__}")
    config = model.config()
    extra = sorted(set(config) - set(CONFIG_KEYS) - set(ONLY) - set(UNUSED))
    if extra:
        raise ValueError("cannot export this model: the exported module does not implement "
                         + ", ".join(f"{k}={config[k]!r}" for k in extra))
    for key, value in ONLY.items():
        if config.get(key, value) != value:
            raise ValueError(f"cannot export this model: the exported module implements {key} {value!r} only, "
                             f"and this model has {key} {config[key]!r}")
    for key, known in (("likelihood", LIKELIHOODS), ("activation", ACTIVATIONS)):
        if config[key] not in known:
            raise ValueError(f"cannot export this model: the exported module does not implement its {key} "
                             f"{config[key]!r} (it knows {', '.join(known)})")
    want, have = set(parameter_names(config)), set(model.params)
    if want != have:
        raise ValueError("cannot export this model: its parameters differ from those the exported module reads "
                         f"(unknown: {', '.join(sorted(have - want)) or 'none'}; "
                         f"missing: {', '.join(sorted(want - have)) or 'none'})")
    bad = [k for k, v in model.params.items() if not np.all(np.isfinite(v))]
    if bad:
        raise ValueError(f"cannot export this model: its weights {', '.join(bad[:3])} hold NaN or inf")


def _describe_context(context: str, model: VAE) -> str:
    """What c is, for the module's docstring."""
    m = model.context_dim
    if not m:
        return "none (the model takes no c)"
    if context == "label":
        return f"the one-hot label, (n, {m}): c[i, y] = 1 for the class y of row i"
    if context.startswith("mask:"):
        return (f"[x * (1 - mask), mask], (n, {m}): the observed pixels and the mask (1 = missing), "
                f"trained on {context[5:]} masks")
    return f"a vector of {m} values per example"


def export(model: VAE, directory, name: str = "vae", overwrite: bool = False, context: str = "none",
           source: Optional[str] = None, image_shape=None) -> List[Path]:
    """Write ``NAME.py``, ``NAME.npz`` and ``NAME.json`` for ``model`` into ``directory``.

    ``context``: what a conditional model's c is (a run's ``config.context``:
    ``label`` or ``mask:KIND``), for the docstring and the JSON. ``source``,
    ``image_shape``: recorded in the JSON. Refuses to replace an existing
    file of the same names unless ``overwrite``. Returns the paths written.
    """
    if not (name.isidentifier() and not keyword.iskeyword(name)) or name in IMPORTED:
        raise ValueError(f"--name must be a Python module name other than {', '.join(IMPORTED)}; got {name!r}")
    check_exportable(model)
    directory = Path(directory)
    paths = [directory / f"{name}{suffix}" for suffix in (".npz", ".json", ".py")]
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"{directory} already holds {', '.join(existing)}; pass --overwrite to replace "
                         "them, or choose another directory or --name")
    make_dirs(directory)
    config = model.config()
    header = {key: config[key] for key in CONFIG_KEYS}
    header.update(format=FORMAT, format_version=FORMAT_VERSION, scratchvae_version=__version__,
                  context=context if model.context_dim else "none", image_shape=image_shape, source=source)
    module = string.Template(TEMPLATE.read_text()).substitute(
        version=__version__, name=name, model=repr(model), context=_describe_context(context, model))
    weights = io.BytesIO()                 # made in memory: the write below knows its exact size
    np.savez(weights, **{k: np.asarray(v) for k, v in model.params.items()})
    for path, data in zip(paths, (weights.getvalue(), (json.dumps(header, indent=1) + "\n").encode("utf-8"),
                                  module.encode("utf-8"))):
        write_bytes(path, data)
    return paths
