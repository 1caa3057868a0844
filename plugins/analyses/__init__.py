"""Built-in analyses: the paper's unit probes (Section 3) and spectral upper bounds (Section 4.3).

Each module is its own plugin (see the entry points in pyproject.toml).
"""
