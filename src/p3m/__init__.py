"""p3m: privacy-preserving portrait matting (P3M-Net, ACM MM 2021 / IJCV 2023)."""
__version__ = "0.1.0"
