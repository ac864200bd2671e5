"""Algorithms by name: ``REGISTRY[name]`` is the algorithm class; ``--algo NAME`` picks it.

Each class has a ``Config`` dataclass and is built as ``cls(config, image_shape)``.
Per-dataset defaults come from the module's ``dataset_settings(dataset, image_shape)``.
"""

from jaxclust.algos import depict

REGISTRY = {
    "depict": depict,
}
