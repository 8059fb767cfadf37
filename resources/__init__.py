"""Shipped model weights (``models/*.safetensors``) and their cards (``models/*.json``)."""
