"""Datasets: the P3M-10k folder layout, trimap generation, synthetic data."""
