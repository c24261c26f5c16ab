"""Baselines that share the request and statistics machinery but not the MEMIT engine."""
