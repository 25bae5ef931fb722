"""convergence: do different neural networks converge on the same representations?"""

__version__ = "0.1.0"
