"""Models: shared layers (layers.py), the KL-VAE / T-KLVAE (vae.py), the MTD 3-D UNet."""
