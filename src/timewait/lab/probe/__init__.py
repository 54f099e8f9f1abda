"""Conformance probes: the model against the running kernel, segment by segment, over TUN.

`timewait lab probe` runs the corpus (scripts/*.probe, one case per file: timewait.lab.probe.
script describes the format) on the kernel, each in a namespace of its own with a TUN device
(kernel.py), replays it on a model host at the times the kernel saw each step (modelside.py),
and compares the two (compare.py). fuzz.py generates sequences with hypothesis and prints any
disagreement as a script ready to add.
"""
