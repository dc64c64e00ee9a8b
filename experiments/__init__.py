"""Runnable experiment scripts: ``python -m experiments.cifar`` and ``python -m experiments.mnist``."""
