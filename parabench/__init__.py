"""parabench: a pytest benchmark suite and regression gate for distributed training."""

__version__ = "0.1.0"
