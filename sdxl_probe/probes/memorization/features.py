"""The feature space of the copy cosine: VAE latents by default, or an open_clip image encoder.

Somepalli et al. 2023 score copies by the cosine of image embeddings (SSCD or CLIP). With
``--features-model ARCH --features-weights FILE.safetensors`` the probe builds open_clip's ``ARCH``
(``open_clip.create_model_and_transforms(ARCH, pretrained=None)``), loads the state dict from the
safetensors file, and embeds images with ``encode_image`` after open_clip's own eval transform
(resize, centre crop, normalise); the embeddings are L2-normalised.

Weights are read only from ``.safetensors`` files: a pickled checkpoint (``.pt``, ``.bin``) can run code
when loaded, so it is refused. An SSCD TorchScript file is refused for the same reason (loading TorchScript
unpickles); convert such a model's state dict to safetensors and name its open_clip architecture instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdxl_probe.errors import ProbeError

VAE_FEATURES = "VAE latents (posterior mean)"


def weights_problem(arch: str, weights: str) -> tuple[str, str, str] | None:
    """(field, problem, fix) when the two options do not name a usable pair, else None (no model is built)."""
    if not arch and not weights:
        return None
    if not weights:
        return "features_model", "needs --features-weights", "pass --features-weights FILE.safetensors too"
    if not arch:
        return "features_weights", "needs --features-model", "pass --features-model ARCH (an open_clip name, e.g. ViT-B-32)"
    if Path(weights).suffix != ".safetensors":
        return ("features_weights", "not a .safetensors file (pickled checkpoints and TorchScript are refused: "
                "loading them can run code)", "save the model's state_dict with safetensors.torch.save_file")  # fmt: skip
    if not Path(weights).is_file():
        return "features_weights", "not found", "pass the path of an existing .safetensors file"
    import open_clip

    if arch not in open_clip.list_models():
        return "features_model", "not an open_clip architecture", "pass a name from open_clip.list_models(), e.g. ViT-B-32"
    return None


@dataclass
class ImageEncoder:
    """An open_clip model's image tower with its eval transform; calling it gives (N, D) unit vectors."""

    model: torch.nn.Module
    preprocess: object
    label: str

    def to(self, device: torch.device | str) -> ImageEncoder:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch_size: int) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, D) float32 on the CPU, each row of norm 1."""
        from PIL import Image

        device = next(self.model.parameters()).device
        parts = []
        for s in range(0, len(images), batch_size):
            x = torch.stack([self.preprocess(Image.fromarray(im)) for im in images[s : s + batch_size]])  # (B, 3, S, S)
            parts.append(self.model.encode_image(x.to(device)).float().cpu())  # (B, D)
        return torch.nn.functional.normalize(torch.cat(parts), dim=1)


def load_encoder(arch: str, weights: str | Path) -> ImageEncoder:
    """Build open_clip ``arch`` and load ``weights`` (a safetensors state dict); ProbeError when they do not fit."""
    import open_clip
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0][:160]
        raise ProbeError(f"--features-weights {weights}: does not fit open_clip {arch} ({first}); "
                         f"pass the weights saved from a {arch} model, or the --features-model they were saved from") from None  # fmt: skip
    return ImageEncoder(model.eval(), preprocess, f"open_clip {arch} image embeddings ({Path(weights).name})")
