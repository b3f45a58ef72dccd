"""A study: YAML -> cells and trials, a Ray Tune run with per-cell ASHA and per-cell Optuna, resume.

Import from the modules (`cytotune.study.spec`, `.grid`, `.runner`, ...): this file stays empty so that
reading a study's schema does not start Ray's imports.
"""
