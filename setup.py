"""Package list for setuptools (everything else is in pyproject.toml).

``workbench*`` is found as usual; ``workbench_widgets`` is the top-level ``widgets/`` directory
(the widgets' ESM and CSS), mapped by ``[tool.setuptools.package-dir]`` so that the same files
are used by an editable install and shipped inside the wheel. See widgets/README.md.
"""

from setuptools import find_namespace_packages, setup

setup(packages=find_namespace_packages(include=["workbench*"]) + ["workbench_widgets"])
