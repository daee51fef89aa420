"""Never download backbone weights silently: the docks ask before a job would fetch a Hugging Face repository.

:func:`download_needed` (core) tells, from local files only, whether loading a backbone name would download
a repository. The docks call :meth:`DownloadGate.allowed` before starting a job; the question is asked with
:func:`ask_download` (a Yes/No message box), or with whatever callable replaces ``DownloadGate.ask`` (tests,
scripts). "Yes" is remembered per repository for the viewer session; "No" cancels the job with a message
saying what to do instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set: loading only reads the local cache, nothing can be downloaded."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def repo_to_download(backbone: str) -> str | None:
    """The Hugging Face repository loading ``backbone`` would download, or None (local files, cached, offline)."""
    from ..core.backbone.identity import download_needed

    if hub_offline():
        return None  # the loader reads the cache only and says what to download if the weights are missing
    try:
        return download_needed(backbone)
    except (OSError, ValueError):  # an unusable name: loading it gives the clear error
        logger.debug("download check of %r failed", backbone, exc_info=True)
        return None


def download_size(repo: str) -> str | None:
    """Rough size of a known preset's float32 weights, e.g. 'about 90 MB' (12 x depth x width^2 parameters)."""
    from ..core.backbone.loading import find_spec

    spec = find_spec(repo)
    if spec is None:
        return None
    megabytes = 12 * spec.depth * spec.embed_dim**2 * 4 / 1e6
    return f"about {megabytes / 1000:.1f} GB" if megabytes >= 1000 else f"about {round(megabytes, -1):.0f} MB"


def ask_download(repo: str, parent: Any = None) -> bool:
    """Ask the user (a Yes/No message box, No by default) whether to download ``repo`` from Hugging Face now."""
    from qtpy.QtWidgets import QMessageBox

    size = download_size(repo)
    answer = QMessageBox.question(
        parent,
        "Download backbone weights?",
        f"The backbone weights '{repo}' are not on this computer.\n\n"
        f"Download them from Hugging Face now{f' ({size})' if size else ''} from https://huggingface.co/{repo}? "
        "They are stored in the Hugging Face cache and used from there next time.",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def declined_message(repo: str, *, for_model: bool = False) -> str:
    """What to do after answering No: download it yourself, or use weights that are already here."""
    instead = (
        "or retrain the model on weights that are already here ('Select weights...' in the HR-Dv2 Features dock)"
        if for_model
        else "or pick weights that are already on this computer with 'Select weights...' in the HR-Dv2 Features dock"
    )
    return (
        f"Not downloaded: '{repo}' is needed{' by this model' if for_model else ''}. Download it yourself with "
        f"`hf download {repo}` (or copy a Hugging Face cache that holds it to ~/.cache/huggingface/hub) and press "
        f"again, {instead}."
    )


class DownloadGate:
    """Per viewer session: which repositories the user agreed to download, and how to ask."""

    def __init__(self, ask: Callable[[str, Any], bool] = ask_download):
        #: Asks whether to download a repository: ``ask(repo, parent_widget) -> bool``.
        self.ask = ask
        self.agreed: set[str] = set()

    def allowed(self, backbone: str, parent: Any = None, *, interactive: bool = True) -> tuple[bool, str | None]:
        """(go ahead?, repo asked about) for a job loading ``backbone``; asks unless agreed before or not interactive."""
        repo = repo_to_download(backbone)
        if repo is None or repo in self.agreed:
            return True, repo
        if interactive and self.ask(repo, parent):
            self.agreed.add(repo)
            return True, repo
        return False, repo
