"""Datasets: CIFAR-10 reading, downloading and fast in-memory batch iteration (the public names
of :mod:`~gdp_graph.recipes.cifar10.data.cifar10`)."""

from gdp_graph.recipes.cifar10.data.cifar10 import *  # noqa: F403
from gdp_graph.recipes.cifar10.data.cifar10 import __all__  # noqa: F401 - listed once, there
