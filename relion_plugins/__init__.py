"""relion-plugins: self-supervised particle picking as RELION External jobs."""

__version__ = "0.1.0"
