"""Only what pyproject.toml cannot say: the shipped policies live at the top of the tree
(``policies/``) and install as the data package ``gdp_graph.shipped_policies``."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["gdp_graph*"]) + ["gdp_graph.shipped_policies"],
    package_dir={"gdp_graph.shipped_policies": "policies"},
    package_data={"gdp_graph": ["py.typed"], "gdp_graph.shipped_policies": ["*.yaml", "*.json"]},
)
