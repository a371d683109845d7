"""Package data: the JSON templates and schemas of this folder ship in the wheel as
``miemss_node.dicom_templates`` and are read with :mod:`importlib.resources`
(see ``miemss_node/encode/templates.py`` and ``setup.py``)."""
