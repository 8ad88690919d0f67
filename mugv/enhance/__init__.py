"""The MUG-V video enhancer: a Wan2.1 DiT with a second patch embedding for the low-quality
video's latents, the Wan2.1 VAE and the umT5 text encoder, built from diffusers' and
transformers' modules and loaded from the release's files (docs/enhance.md).

* config.py     the two model families' configs and presets, the release's settings
* adapters.py   the release's files -> those modules (key maps, LoRA merge, condition branch)
* families.py   registers `wan-dit` and `wan-vae` in mugv.models.registry
* text.py       umT5 prompt encoding as the release does it
* pipeline.py   one Euler flow step from sigma 0.3 with CFG, the first latent frame kept clean
* degrade.py    degraded copies of clean clips (the low-quality side of training pairs)
* objective.py  the training objective: flow matching conditioned on the low-quality latents
"""
