"""Built-in models (the public names of :mod:`~gdp_graph.recipes.cifar10.models.cifar_resnet`)."""

from gdp_graph.recipes.cifar10.models.cifar_resnet import *  # noqa: F403
from gdp_graph.recipes.cifar10.models.cifar_resnet import __all__  # noqa: F401 - listed once, there
