"""Training, evaluation and latent statistics of the video VAE (`mugv vae train|eval|stats`)."""
