"""The benchmark harness: esperc packages against eager PyTorch, torch.compile, Liger and SDPA.

Entry point: ``python bench/run.py`` (see bench/README.md).
"""
