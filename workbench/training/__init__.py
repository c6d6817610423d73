"""Training: the config and its flags, the trainer, losses, optimizer and schedule, runtime, curves.

Import the modules themselves (``from workbench.training.trainer import train``): this package
imports nothing, so that building the CLI's ``train`` flags from :mod:`workbench.training.config`
loads no torch.
"""
