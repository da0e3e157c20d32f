"""Reading an `issuer-seq export` bundle's manifest: the one reader the scorer and the
service share, so that both refuse a bundle with the same message.

`read_manifest` is what the service needs before it listens (the model's name, its
histories, the delay grid); `verify_bundle` adds what loading needs: this scorer's format and
every listed file's checksum. The export side writes the manifest (export/manifest.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from issuer_seq.errors import IssuerSeqError

FORMAT_VERSION = 6  # 2: the card_merchant stream; 3: the same_payment inputs; 4: the
# factored event and query graphs; 5: the query graph's streams stacked; 6: the route graph
MANIFEST = "manifest.json"


class BundleError(IssuerSeqError):
    """The bundle is missing, tampered with, or of another format."""


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest, checked to be readable (files not re-hashed: see `verify_bundle`)."""
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root}: no {MANIFEST}; is this an `issuer-seq export` bundle?")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
        manifest["model"]["name"], manifest["history"]["k_card"], manifest["delay_grid"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: not a readable bundle manifest ({exc!r})") from None
    return manifest


def verify_bundle(root: Path) -> dict[str, Any]:
    """The manifest, once its format is this scorer's and every file it lists re-hashes to
    its checksum; anything that differs is refused."""
    manifest = read_manifest(root)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{root}: bundle format version {version!r}, this scorer reads {FORMAT_VERSION}"
        )
    problems = []
    for rel, entry in manifest["files"].items():
        p = root / rel
        if not p.is_file():
            problems.append(f"{rel} is missing")
            continue
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            problems.append(
                f"{rel} has sha256 {digest[:12]}..., manifest says {entry['sha256'][:12]}..."
            )
    if problems:
        raise BundleError(f"{root}: bundle failed verification: " + "; ".join(problems))
    return manifest
