"""Small, self-contained experiments that check a paper's claim in seconds on a CPU.

Each is a runnable module (``python -m prefopt.experiments.<name> --help``) with a ``run_*``
function that returns its results as a dict, for tests and the ablation runner.
"""
