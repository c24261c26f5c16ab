"""Experiment drivers: evaluation, metrics and downstream general-capability checks."""
