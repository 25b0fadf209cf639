"""The floor of lrfer: what every other package may import, and which imports nothing else of lrfer
(:mod:`lrfer.core.degradation`: degradation labels and the realistic operations' registry)."""
