"""Weight import from PyTorch checkpoints (safetensors): common helpers, VAE, UNet, CLIP."""
