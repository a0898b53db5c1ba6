"""Package list for setuptools (everything else is in pyproject.toml).

The wheel carries the top-level `configs/` (the run files `--config NAME` resolves) as
`llada_jax/configs`, so an installed `llada-jax train --config paper` works without the source
tree; pyproject's package finder cannot map a folder outside the package, hence this file.
"""

from setuptools import find_namespace_packages, setup

setup(packages=find_namespace_packages(include=["llada_jax*"]) + ["llada_jax.configs"],
      package_dir={"llada_jax.configs": "configs"})
