"""bcd_lightning: Boundary and Context Distillation for dense prediction (Lightning + Hydra)."""

__version__ = "0.1.0"
