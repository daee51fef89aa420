"""The registry of published DINOv2 / DINOv3 backbones: frozen facts, no torch import.

The CLI and the widgets list :func:`backbone_names`; :mod:`.backbones` loads them.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Normalisation of the DINOv3 satellite (SAT-493M) models.
SATELLITE_MEAN = (0.430, 0.411, 0.296)
SATELLITE_STD = (0.213, 0.156, 0.143)

#: transformers model types that are loaded; anything else is refused before transformers sees the folder.
MODEL_TYPES = {"dinov2": "dinov2", "dinov2_with_registers": "dinov2", "dinov3_vit": "dinov3"}

DINOV3_ACCESS = (
    "DINOv3 weights are gated behind Meta's DINOv3 licence: request access at "
    "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/ (official .pth files by e-mail) or "
    "accept the licence on the model's Hugging Face page and log in with `hf auth login`."
)


@dataclass(frozen=True)
class BackboneFamily:
    """Facts shared by the members of one family (for the README table and messages)."""

    name: str
    patch_size: int
    num_registers: int
    weights: str
    licence: str


FAMILIES: dict[str, BackboneFamily] = {
    "dinov2": BackboneFamily("DINOv2", 14, 0, "https://huggingface.co/facebook or https://dl.fbaipublicfiles.com/dinov2/", "Apache-2.0"),
    "dinov2_reg": BackboneFamily("DINOv2 with registers", 14, 4, "https://huggingface.co/facebook or https://dl.fbaipublicfiles.com/dinov2/", "Apache-2.0"),
    "dinov3": BackboneFamily("DINOv3", 16, 4, "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/ (gated)", "DINOv3 License"),
}  # fmt: skip


@dataclass(frozen=True)
class BackboneSpec:
    """Facts about one published checkpoint."""

    name: str
    hf_id: str
    embed_dim: int
    depth: int
    num_heads: int
    num_registers: int = 0
    patch_size: int = 14
    family: str = "dinov2"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    checkpoint: str = ""

    @property
    def official_filename(self) -> str:
        """File name of the official torch.hub checkpoint, e.g. ``dinov2_vits14_pretrain.pth``."""
        if self.checkpoint:
            return self.checkpoint
        reg = "_reg4" if self.num_registers else ""
        return f"{self.name.removesuffix('_reg')}{reg}_pretrain.pth"

    @property
    def gated(self) -> bool:
        return self.family == "dinov3"


_SIZES = {
    "s": ("small", 384, 12, 6),
    "b": ("base", 768, 12, 12),
    "l": ("large", 1024, 24, 16),
    "g": ("giant", 1536, 40, 24),
}

BACKBONES: dict[str, BackboneSpec] = {}
for _letter, (_word, _dim, _depth, _heads) in _SIZES.items():
    BACKBONES[f"dinov2_vit{_letter}14"] = BackboneSpec(
        f"dinov2_vit{_letter}14", f"facebook/dinov2-{_word}", _dim, _depth, _heads
    )
    BACKBONES[f"dinov2_vit{_letter}14_reg"] = BackboneSpec(
        f"dinov2_vit{_letter}14_reg",
        f"facebook/dinov2-with-registers-{_word}",
        _dim,
        _depth,
        _heads,
        num_registers=4,
        family="dinov2_reg",
    )
_DINOV3 = {  # name: (embed dim, depth, heads, official checkpoint hash)
    "vits16": (384, 12, 6, "08c60483"),
    "vits16plus": (384, 12, 6, "4057cbaa"),
    "vitb16": (768, 12, 12, "73cec8be"),
    "vitl16": (1024, 24, 16, "8aa4cbdd"),
    "vith16plus": (1280, 32, 20, "7c1da9a5"),
}
for _size, (_dim, _depth, _heads, _hash) in _DINOV3.items():
    BACKBONES[f"dinov3_{_size}"] = BackboneSpec(
        f"dinov3_{_size}", f"facebook/dinov3-{_size}-pretrain-lvd1689m", _dim, _depth, _heads, num_registers=4,
        patch_size=16, family="dinov3", checkpoint=f"dinov3_{_size}_pretrain_lvd1689m-{_hash}.pth",
    )  # fmt: skip
BACKBONES["dinov3_vitl16_sat493m"] = BackboneSpec(
    "dinov3_vitl16_sat493m", "facebook/dinov3-vitl16-pretrain-sat493m", 1024, 24, 16, num_registers=4, patch_size=16,
    family="dinov3", mean=SATELLITE_MEAN, std=SATELLITE_STD, checkpoint="dinov3_vitl16_pretrain_sat493m-<hash>.pth",
)  # fmt: skip

_ALIASES: dict[str, str] = {}
for _spec in BACKBONES.values():
    _ALIASES[_spec.hf_id.lower()] = _spec.name
    _ALIASES[_spec.hf_id.split("/")[1].lower()] = _spec.name
    if _spec.family != "dinov3":
        _word = _spec.hf_id.rsplit("-", 1)[-1]
        _ALIASES[(f"{_word}_reg" if _spec.num_registers else _word)] = _spec.name


def backbone_names(family: str | None = None) -> list[str]:
    """Preset names (DINOv2, DINOv2 with registers, DINOv3), smallest first; optionally of one family."""
    return [name for name, spec in BACKBONES.items() if family is None or spec.family == family]


def find_spec(name: str) -> BackboneSpec | None:
    """The preset for a name, alias or Hugging Face id, or ``None``."""
    key = str(name).strip()
    if key in BACKBONES:
        return BACKBONES[key]
    alias = _ALIASES.get(key.lower())
    return BACKBONES[alias] if alias else None


def backbone_family(name: str) -> str | None:
    """``"dinov2"``, ``"dinov2_reg"`` or ``"dinov3"`` for a preset / alias, else ``None``."""
    spec = find_spec(name)
    return spec.family if spec else None
