"""Packages of the distribution; everything else is in pyproject.toml.

``dicom_templates/`` stays a top-level folder of the repository (people edit and review it there)
and ships inside the package as ``miemss_node.dicom_templates``, read with importlib.resources.
pyproject.toml's ``packages.find`` cannot add a package from another folder, hence this file.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["miemss_node*"]), "miemss_node.dicom_templates"],
    package_dir={"miemss_node.dicom_templates": "dicom_templates"},
)
