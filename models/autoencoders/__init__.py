"""LDM KL autoencoders (diffusers ``AutoencoderKL``) and the image/video codec built on one."""
