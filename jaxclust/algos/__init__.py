"""Algorithms by name: ``REGISTRY[name]`` is the algorithm's module; ``--algo NAME`` picks it.

Each module has a ``Config`` dataclass and an ``ALGORITHM`` class built as
``ALGORITHM(config, image_shape)``; per-dataset defaults come from the module's
``dataset_settings(dataset, image_shape)``.
"""

from jaxclust.algos import dec, depict, dscdan, ics, idec, spectralnet

REGISTRY = {
    "dec": dec,
    "depict": depict,
    "dscdan": dscdan,
    "ics": ics,
    "idec": idec,
    "spectralnet": spectralnet,
}
