"""Experiment configs (ml_collections): one file per experiment, `get_config()` in each."""
