"""Measure the pipeline: synthetic lesions in real radiographs, user image + mask pairs, enhancement.

``miemss-node evaluate`` is the command line; :func:`~miemss_node.evaluate.synthetic.evaluate_synthetic`,
:func:`~miemss_node.evaluate.pairs.evaluate_pairs` and :mod:`~miemss_node.evaluate.output` are the parts.
"""
