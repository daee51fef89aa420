"""What the Features dock's backbone settings will load, in words (no loading, no network)."""

from __future__ import annotations

from pathlib import Path

from ..core.backbone.loading import find_spec


def describe_source(backbone: str) -> str:
    """What loading ``backbone`` will actually read, in words (no loading, no network)."""
    try:
        return describe_source_of(backbone)
    except OSError as err:  # e.g. a name longer than the file system allows
        return f"{backbone} (unusable path: {err.strerror or err})"


def describe_source_of(backbone: str) -> str:
    """:func:`describe_source` without its guard against unusable paths."""
    spec = find_spec(backbone)
    path = Path(backbone).expanduser()
    if spec is not None and not path.exists():
        where = hub_cache_state(spec.hf_id)
        return f"preset {spec.name} = Hugging Face {spec.hf_id} ({where})"
    if path.is_dir():
        ok = (path / "config.json").is_file()
        return f"local folder {path}" + ("" if ok else " (no config.json: not a save_pretrained folder)")
    if path.is_file():
        return f"checkpoint file {path.name} in {path.parent}"
    if path.suffix or "/" in backbone and backbone.startswith((".", "/", "~")):
        return f"{backbone} (does not exist)"
    return f"Hugging Face {backbone} ({hub_cache_state(backbone)})"


def hub_cache_state(hf_id: str) -> str:
    """Whether the Hugging Face repository ``hf_id`` is in the local cache, in words."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(hf_id, "config.json")
    except Exception:  # noqa: BLE001 - only a hint
        cached = None
    if isinstance(cached, str):
        return "in the Hugging Face cache"
    return f"not downloaded yet: Compute asks before downloading it, or run `hf download {hf_id}`"
