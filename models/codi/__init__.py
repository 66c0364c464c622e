"""CoDi's latent diffusers: image/video, audio and text UNets with environment encoders and
cross-modal attention, behind one call (``CoDi``), plus converters from released weights."""

from .config import CoDiConfig, UNetSpec, audio_unet, image_unet, text_unet
from .model import CoDi

__all__ = ["CoDi", "CoDiConfig", "UNetSpec", "audio_unet", "image_unet", "text_unet"]
