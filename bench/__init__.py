"""Benchmarks and the prepared GPU check.

Run from the repository root, either way: `python bench/step.py` or `python -m bench.step`
(each script puts the repository root on sys.path when it is run as a file).
"""
