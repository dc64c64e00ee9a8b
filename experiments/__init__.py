"""Runnable experiment scripts: ``python -m experiments.cifar``, ``python -m experiments.mnist``
and the tools beside them."""
