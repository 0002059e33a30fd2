"""The speed layer: what makes the paper's networks train and generate faster without changing
what they compute, put on from outside.

The rest of the project uses only what this module exports: ``accelerate`` (make built networks
and their optimizers fast; returns an ``Acceleration``, what it applied) and ``GraphedStep`` (the
training step replayed as one CUDA graph). The layers, Functions and optimizer hooks behind them
stay inside this package; a checkpoint is written and read in the standard layout whatever of
this was applied.
"""

from speed.acceleration import Acceleration, accelerate
from speed.cuda_graphs import GraphedStep

__all__ = ["Acceleration", "GraphedStep", "accelerate"]
