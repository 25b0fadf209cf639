"""The floor of lrfer: what every other package may import, and which imports nothing else of lrfer.

- :mod:`lrfer.core.errors`: the one-line user errors and the exit statuses of every command;
- :mod:`lrfer.core.checkpoint`: checkpoint and JSON files written atomically, read back and verified;
- :mod:`lrfer.core.names`: the names an option may take (optimisers, schedulers, precisions, kernels, ...),
  shared by the config validation and the code that acts on them;
- :mod:`lrfer.core.degradation`: degradation labels and the realistic operations' registry;
- :mod:`lrfer.core.compat`: torchvision imported even when its compiled operators cannot load.
"""
