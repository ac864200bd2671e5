"""Per-dataset settings of each algorithm, one module per algorithm (``configs.depict``)."""
