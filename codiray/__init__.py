"""codiray: train composable any-to-any diffusion models (CoDi) at cluster scale on Ray."""

__version__ = "0.1.0"
