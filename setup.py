"""Maps the source folders under one `p2pm` namespace.

The repository keeps short top-level folders (common/, services/, config/); installed,
they become p2pm.common, p2pm.services and p2pm.config, so site-packages never gets bare
generic names like `common`. `p2pm` itself is a namespace package (no __init__.py).
Everything else about the package is in pyproject.toml.
"""

from setuptools import find_packages, setup

ROOTS = {"common": "p2pm.common", "services": "p2pm.services", "config": "p2pm.config"}

packages: list[str] = []
package_dir: dict[str, str] = {}
for folder, name in ROOTS.items():
    package_dir[name] = folder
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"p2pm.config": ["*.toml", "*.conf"]},
)
