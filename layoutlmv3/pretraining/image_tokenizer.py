"""A discrete image tokenizer for masked image modeling (MIM): page image -> one visual token per image patch.

LayoutLMv3's MIM objective predicts, for each masked 16x16 patch of the 224x224 page, the discrete token a frozen
image tokenizer gives that patch. The paper uses DiT's dVAE (8192 codes, a 112x112 image -> 14x14 tokens); those
weights cannot be downloaded here, so `ImageTokenizer` is a VQ-VAE trained on document pages
(`pretraining.image_tokenizer_job`): an encoder turns each 8x8 pixel patch of the 112 px page into one vector (14x14
vectors), a vector quantiser maps each vector to its nearest code, and a convolutional decoder reconstructs the
page from the 14x14 codes.

The encoder is patch-local: a one-hidden-layer MLP applied to each 8x8 patch on its own (a stride-8 convolution,
SiLU, a 1x1 convolution). So the code of token (r, c) is a function of patch (r, c) alone and the MIM label of a patch
describes exactly that patch; the decoder's 3x3 convolutions over the code grid supply the context. (In CPU
experiments on synthetic pages, deeper convolutional encoders with overlapping receptive fields learned more
slowly and were prone to codebook collapse.)

Choices that keep the codebook in use (a VQ-VAE's usual failure is a handful of codes doing all the work):

- Codes are low-dimensional (`code_dim`, e.g. 32) and looked up by cosine similarity: encoder outputs and codes
  are l2-normalised, so no code can win by norm alone.
- The codebook is a buffer updated by exponential moving averages of the encoder outputs assigned to each code
  (no codebook gradient), with a commitment loss pulling the encoder towards its codes.
- Dead-code restarts: a code whose moving-average assignment count per batch falls below `dead_code_threshold`
  is moved onto an encoder output of the current batch, drawn with probability proportional to its quantisation
  error, so spare codes go where the codebook fits the data worst.

Images everywhere in this module are float RGB tensors [B, 3, 112, 112] with values in 0..1 (pixels / 255; not the
model's mean-0.5/std-0.5 `pixel_values`). Codes are int64 [B, 196], row-major over the 14x14 grid: code r*14+c
covers pixels [8r, 8r+8) x [8c, 8c+8) of the 112 image, i.e. patch r*14+c of the 224 image in the model's order.

Extension point (an external tokenizer such as DiT's dVAE): the MIM collator and model depend only on the
`VisualTokenizer` protocol below, not on `ImageTokenizer`. To use another tokenizer, wrap it in a class with a
`codebook_size` property and an `encode(images) -> codes` method that takes 0..1 images [B, 3, 112, 112] and
returns int64 codes [B, 196] in row-major patch order (for DiT's dVAE: apply its `map_pixels`, run the encoder and
take the argmax over the 8192 logits of each of the 14x14 positions, flattened row-major).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from layoutlmv3.json_files import read_json_file
from layoutlmv3.model import weights_io

MODEL_TYPE = "layoutlmv3-image-tokenizer"


@runtime_checkable
class VisualTokenizer(Protocol):
    """What MIM needs from an image tokenizer (see the module docstring for the contract of `encode`)."""

    @property
    def codebook_size(self) -> int: ...

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass
class ImageTokenizerConfig:
    """Shape of the VQ-VAE. Defaults are the `base` flavor (8192 codes, the size of DiT's dVAE vocabulary)."""

    codebook_size: int = 8192
    code_dim: int = 32
    # Width of the per-patch encoder MLP and of the decoder's convolutions over the 14x14 code grid.
    hidden_channels: int = 512
    # 3x3 residual blocks of the decoder (the encoder stays patch-local).
    num_res_blocks: int = 2
    image_size: int = 112
    downsample_factor: int = 8
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    # A code whose moving-average count of assignments per training batch is below this is restarted. Scale it
    # with the batch: a batch holds batch_size * 196 vectors, about that / codebook_size per code (0.25 is ~8% of
    # the average at batch 128 with 8192 codes).
    dead_code_threshold: float = 0.25

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on values that cannot build a tokenizer, naming the offending field."""
        for name in ("code_dim", "hidden_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
        if self.num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be >= 0, got {self.num_res_blocks}")
        factor = self.downsample_factor
        if factor < 1 or self.image_size % factor:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of downsample_factor ({factor})")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.commitment_weight < 0:
            raise ValueError(f"commitment_weight must be >= 0, got {self.commitment_weight}")
        if self.dead_code_threshold <= 0:
            raise ValueError(
                f"dead_code_threshold must be > 0 (restarts keep codes in use), got {self.dead_code_threshold}"
            )

    @property
    def grid_size(self) -> int:
        """Tokens per side (112 / 8 = 14, the model's 224 / 16 patch grid)."""
        return self.image_size // self.downsample_factor

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    @classmethod
    def from_flavor(cls, name: str, **overrides: Any) -> ImageTokenizerConfig:
        """A named flavor (`tiny` for tests and CPU runs, `base`), optionally with fields overridden."""
        if name not in FLAVORS:
            raise ValueError(f"unknown image tokenizer flavor {name!r}; choose one of {sorted(FLAVORS)}")
        return cls.from_dict({**FLAVORS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ImageTokenizerConfig:
        """Build from a dict, rejecting unknown keys so typos in a config file are not silently ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ImageTokenizerConfig fields: {unknown}; known: {sorted(known)}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        weights_io.write_json({"model_type": MODEL_TYPE, **self.to_dict()}, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> ImageTokenizerConfig:
        values = read_json_file(path)  # as every model directory's JSON: NaN, a FIFO, 10 GB named, not read
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object of config fields")
        model_type = values.pop("model_type", None)
        if model_type != MODEL_TYPE:
            raise ValueError(f"{path}: model_type {model_type!r} is not {MODEL_TYPE!r}")
        return cls.from_dict(values)


FLAVORS: dict[str, dict[str, Any]] = {
    # Tests and CPU runs: ~0.14M parameters; 0.5 is ~8% of the average count per code at batch 16.
    "tiny": dict(codebook_size=512, code_dim=16, hidden_channels=256, num_res_blocks=0, dead_code_threshold=0.5),
    "base": dict(),
}


@dataclass
class ImageTokenizerOutput:
    """`reconstruction` is unclamped (the loss sees it as is); `decode` clamps to 0..1."""

    reconstruction: torch.Tensor  # float [B, 3, H, W]
    loss: torch.Tensor  # recon_loss + commitment_weight * commit_loss
    recon_loss: torch.Tensor  # mean squared error against the 0..1 input
    commit_loss: torch.Tensor  # mean squared distance of normalised encoder outputs to their codes
    codes: torch.Tensor  # int64 [B, grid * grid], row-major
    perplexity: torch.Tensor  # exp(entropy) of the batch's code histogram: the effective number of codes in use


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Encoder(nn.Module):
    """Pixels [B, 3, S, S] -> one `code_dim` vector per f x f patch [B, code_dim, S/f, S/f], each from its patch only."""

    def __init__(self, config: ImageTokenizerConfig) -> None:
        super().__init__()
        factor, width = config.downsample_factor, config.hidden_channels
        self.patches = nn.Conv2d(3, width, factor, stride=factor)
        self.project = nn.Conv2d(width, config.code_dim, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(F.silu(self.patches(images * 2 - 1)))


class Decoder(nn.Module):
    """Codes [B, code_dim, S/f, S/f] -> pixels [B, 3, S, S] (trained towards 0..1, not clamped)."""

    def __init__(self, config: ImageTokenizerConfig) -> None:
        super().__init__()
        factor, width = config.downsample_factor, config.hidden_channels
        self.layers = nn.Sequential(
            nn.Conv2d(config.code_dim, width, 3, padding=1),
            *[ResidualBlock(width) for _ in range(config.num_res_blocks)],
            nn.SiLU(),
            nn.ConvTranspose2d(width, 3, factor, stride=factor),
        )

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.layers(codes) * 0.5 + 0.5


class VectorQuantizer(nn.Module):
    """Nearest-code lookup by cosine similarity, EMA codebook updates and dead-code restarts (see module doc)."""

    def __init__(self, config: ImageTokenizerConfig) -> None:
        super().__init__()
        self.decay = config.ema_decay
        self.threshold = config.dead_code_threshold
        codebook = F.normalize(torch.randn(config.codebook_size, config.code_dim), dim=1)
        # Every code starts as if just restarted: those the first batch does not use are restarted from its data.
        self.register_buffer("codebook", codebook)
        self.register_buffer("embed_sum", codebook * self.threshold)
        self.register_buffer("cluster_size", torch.full((config.codebook_size,), self.threshold))

    def lookup(self, vectors: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code of each normalised vector [N, D] -> [N]."""
        return (vectors @ self.codebook.T).argmax(dim=1)

    def forward(
        self, vectors: torch.Tensor, update: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """vectors [N, D] -> (straight-through quantised [N, D], codes [N], commitment loss, perplexity).

        Runs in float32 whatever the autocast state, so the argmax is not decided by bf16 rounding.
        """
        with torch.autocast(vectors.device.type, enabled=False):
            vectors = F.normalize(vectors.float(), dim=1)
            codes = self.lookup(vectors)
            counts = torch.bincount(codes, minlength=self.codebook.shape[0]).float()
            if update:
                self._update(vectors.detach(), codes, counts)
            quantized = self.codebook[codes]
            commit_loss = F.mse_loss(vectors, quantized)
            probabilities = counts / counts.sum()
            perplexity = torch.exp(-(probabilities * torch.log(probabilities + 1e-10)).sum())
        return vectors + (quantized - vectors).detach(), codes, commit_loss, perplexity

    @torch.no_grad()
    def _update(self, vectors: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        """Move each code to the moving average of its assigned vectors; restart codes that fell out of use.

        Trained on several ranks, the statistics are summed over all of them first (an all-reduce), so every
        rank applies the update of the global batch and the codebooks never drift apart."""
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, vectors)
        if _distributed():
            counts = counts.clone()
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        if not torch.isfinite(sums).all():  # a non-finite encoder output (on any rank): leave the codebook as it
            return  # is, as the trainer skips the micro-batch (the all-reduced sums agree on every rank)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.codebook.copy_(F.normalize(self.embed_sum, dim=1))
        dead = torch.nonzero(self.cluster_size < self.threshold).squeeze(1)
        if len(dead):
            self._restart(dead, vectors, codes)

    def _restart(self, dead: torch.Tensor, vectors: torch.Tensor, codes: torch.Tensor) -> None:
        """Put dead codes onto batch vectors drawn with probability proportional to their quantisation error."""
        error = (vectors - self.codebook[codes]).pow(2).sum(dim=1) + 1e-6
        picks = torch.multinomial(error, len(dead), replacement=len(dead) > len(vectors))
        chosen = vectors[picks].contiguous()
        if _distributed():  # the same dead codes on every rank (synchronised statistics): rank 0's picks for all
            dist.broadcast(chosen, src=0)
        self.codebook[dead] = chosen
        self.embed_sum[dead] = chosen * self.threshold
        self.cluster_size[dead] = self.threshold


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ImageTokenizer(nn.Module):
    """VQ-VAE page tokenizer: 0..1 images [B, 3, 112, 112] <-> codes [B, 196] (see the module docstring)."""

    def __init__(self, config: ImageTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(config)
        self.decoder = Decoder(config)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def forward(self, images: torch.Tensor) -> ImageTokenizerOutput:
        """Reconstruct `images` through the codebook; in training mode this also updates the codebook."""
        self._check_images(images)
        quantized, codes, commit_loss, perplexity = self._quantize(images, update=self.training)
        reconstruction = self.decoder(quantized)
        recon_loss = F.mse_loss(reconstruction.float(), images.float())
        return ImageTokenizerOutput(
            reconstruction=reconstruction,
            loss=recon_loss + self.config.commitment_weight * commit_loss,
            recon_loss=recon_loss,
            commit_loss=commit_loss,
            codes=codes,
            perplexity=perplexity,
        )

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """0..1 images [B, 3, 112, 112] -> int64 codes [B, 196], row-major over the 14x14 grid. Never trains."""
        self._check_images(images)
        return self._quantize(images, update=False)[1]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 codes [B, 196] -> images [B, 3, 112, 112] clamped to 0..1."""
        tokens, size = self.config.num_tokens, self.config.grid_size
        if codes.dtype != torch.long or codes.ndim != 2 or codes.shape[1] != tokens:
            raise ValueError(f"codes must be int64 [B, {tokens}], got {codes.dtype} {list(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must be in 0..{self.codebook_size - 1}")
        vectors = self.quantizer.codebook[codes].view(len(codes), size, size, -1).permute(0, 3, 1, 2)
        return self.decoder(vectors).clamp(0, 1)

    def _quantize(
        self, images: torch.Tensor, update: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode and quantise: (quantised [B, D, g, g], codes [B, g*g] row-major, commitment loss, perplexity)."""
        features = self.encoder(images)
        batch, dim, size, _ = features.shape
        vectors = features.permute(0, 2, 3, 1).reshape(-1, dim)  # row-major: token r * size + c
        quantized, codes, commit_loss, perplexity = self.quantizer(vectors, update=update)
        quantized = quantized.view(batch, size, size, dim).permute(0, 3, 1, 2).to(features.dtype)
        return quantized, codes.view(batch, size * size), commit_loss, perplexity

    def _check_images(self, images: torch.Tensor) -> None:
        size = self.config.image_size
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor [B, 3, {size}, {size}] in 0..1")
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images must be [B, 3, {size}, {size}] (RGB, 0..1), got shape {list(images.shape)}")
        low, high = images.min().item(), images.max().item()
        if not (low >= 0 and high <= 1):  # also rejects NaN
            raise ValueError(
                f"images must be in 0..1 (pixels / 255), got values in [{low:.3g}, {high:.3g}]; "
                "the model's mean-0.5/std-0.5 pixel_values are not valid tokenizer input"
            )

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json + model.safetensors (the weights and the codebook with its EMA statistics)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / weights_io.CONFIG_NAME)
        weights_io.write_weights(self.state_dict(), directory / weights_io.SAFETENSORS_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ImageTokenizer:
        """Load a directory written by `save_pretrained` (safetensors only: nothing pickled is ever read)."""
        directory = Path(directory)
        weights_path = directory / weights_io.SAFETENSORS_NAME
        if not weights_path.is_file():
            raise FileNotFoundError(f"{directory} is not an image tokenizer directory: no {weights_path.name}")
        model = cls(ImageTokenizerConfig.load(directory / weights_io.CONFIG_NAME))
        weights = weights_io.read_weights(directory)
        try:
            model.load_state_dict(weights)
        except RuntimeError as error:
            raise ValueError(f"{weights_path} does not fit its config.json: {error}") from error
        return model.eval()
