"""The one model pipeline: caption conditioning, ``time_ids``, noising, sampling, VAE and LoRA loading.

Probes, the toy recipe and the trainer call these functions; nothing else builds ``time_ids``,
encodes captions for the UNet or noises latents (one route per computation, no train/probe skew).
"""
