"""Built-in models."""

from gdp_graph.recipes.cifar10.models.cifar_resnet import (
    BasicBlock,
    CifarResNet,
    cifar_resnet,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "cifar_resnet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]
