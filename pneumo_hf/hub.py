"""The Hub: is it reachable, and the push of a model folder (the card it shows is `pneumo_hf.card`).

    from pneumo_hf.hub import push_folder
    push_folder("runs/b0", "ORG/pneumonia-efficientnet_b0")   # token from HF_TOKEN or `hf auth login`
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from huggingface_hub import create_repo, upload_folder
from huggingface_hub.constants import ENDPOINT, HF_HUB_OFFLINE

from .errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["DATASET_ID", "HubError", "hub_reachable", "push_folder"]

DATASET_ID = "hf-vision/chest-xray-pneumonia"


class HubError(UserError, RuntimeError):
    """A Hub operation that failed; the message says what to do."""


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hub's host answers within `timeout` seconds (and HF_HUB_OFFLINE is not set).
    A quick check, so that offline runs fail at once with one message instead of retrying for a minute."""
    if HF_HUB_OFFLINE:
        return False
    host = urlparse(ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def push_folder(folder: Path, repo_id: str, token: Optional[str] = None, commit_message: str = "Upload pneumo-hf model") -> str:
    """create_repo(exist_ok=True) then upload_folder; returns the repo URL. The folder is left as it is."""
    token = token or os.environ.get("HF_TOKEN")  # None lets huggingface_hub use the login cache
    if not hub_reachable():
        raise HubError(f"Cannot reach the Hub to push {repo_id}; the model stays in {folder}. Push it later with `hf upload {repo_id} {folder}`.")
    try:
        url = create_repo(repo_id, token=token, exist_ok=True, repo_type="model")
        upload_folder(repo_id=url.repo_id, folder_path=str(folder), token=token, commit_message=commit_message, ignore_patterns=["checkpoints/*", "best_model/*"])
    except Exception as error:  # HTTP, auth and validation errors all end the same way for the user
        raise HubError(f"Push to {repo_id} failed ({type(error).__name__}); the model stays in {folder}. Check `hf auth whoami` and the repo id.") from error
    logger.info("Pushed %s to %s", folder, url)
    return str(url)
