"""CoDi's prompt encoders: CLIP (text, image, video) and CLAP (audio), all into one 768-d space."""
