"""Identities of things, defined once (docs/architecture.md, "Identities").

Every cache, registry entry and lineage record names a model, the training code and the platform
checkout with one of the three identities below, so identical weights have one identity whoever
computes it (the training job, the stage cache, the registry, evaluation, ``eve serve``).

**Weights hash** (``weights_sha256``): sha256 over the *model files* of an HF model directory and
nothing else. The model files are the top-level files whose name matches ``MODEL_FILE_PATTERNS``
(configuration, weights and their index, tokenizer, processor). Everything else in the directory
(``final_metrics.json``, ``stage_config.json``, ``deepspeed_config.json``, model cards, logs) is
left out: it records *how* a run went (times, throughput, W&B ids, paths), not *what* it produced,
so two bit-identical trainings into two folders get the same hash. The digest is taken over one line
per model file, in byte order of the file name::

    <file name> NUL <sha256 of the file's bytes> LF

**Code-tree revision** (``code_tree_revision``): what the stage cache keys on. Git tree hashes of
``eve_model/`` and ``infra/`` (the code and templates that train), plus a hash of their uncommitted
diff; a commit that touches only flows, docs or the README keeps every trained stage. A job on a
node without the git checkout reads it from ``EVE_CODE_REVISION``, which the platform sets.

**Platform commit** (``platform_commit``): what lineage records: the checked-out commit of the whole
repository, ``+dirty`` when tracked files are modified.

Imports nothing heavy: it runs in the orchestrator and on cluster nodes alike.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout this package was imported from (when it was imported from a checkout)."""

CODE_REVISION_ENV = "EVE_CODE_REVISION"
"""Set by the platform on every job so a node without the git checkout reports the same revision."""

MODEL_FILE_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
)
"""Top-level file names that make up a model (fnmatch patterns). The platform writes safetensors
only; ``pytorch_model*.bin`` is here for base LLMs published that way (loaded weights-only)."""

_WEIGHT_FILE_PATTERNS = ("*.safetensors", "pytorch_model*.bin")

_BLOCK_BYTES = 1 << 20


class WeightsMismatch(RuntimeError):
    """A model directory's weights hash differs from the recorded one (edited, truncated, replaced)."""


def file_sha256(path: str | Path) -> str:
    """sha256 of one file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def is_model_file(name: str) -> bool:
    """True when a top-level file of that name belongs to the weights hash."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in MODEL_FILE_PATTERNS)


def model_files(model_dir: str | Path) -> list[Path]:
    """The model files of ``model_dir`` in hashing order (byte order of the name)."""
    directory = Path(model_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    files = sorted(
        (path for path in directory.iterdir() if path.is_file() and is_model_file(path.name)),
        key=lambda path: path.name.encode(),
    )
    if not any(fnmatch.fnmatchcase(path.name, pattern) for path in files for pattern in _WEIGHT_FILE_PATTERNS):
        raise FileNotFoundError(f"{directory} holds no model weights ({', '.join(_WEIGHT_FILE_PATTERNS)})")
    return files


def weights_sha256(model_dir: str | Path) -> str:
    """The weights hash of an HF model directory (see the module docstring for its definition)."""
    digest = hashlib.sha256()
    for path in model_files(model_dir):
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def verify_weights(model_dir: str | Path, expected_sha256: str) -> None:
    """Raise ``WeightsMismatch`` (or ``FileNotFoundError``) unless ``model_dir`` hashes to ``expected_sha256``."""
    actual = weights_sha256(model_dir)
    if actual != expected_sha256:
        raise WeightsMismatch(
            f"{model_dir}: weights hash {actual[:16]}... differs from the recorded {expected_sha256[:16]}... "
            "(a model file was edited, truncated or replaced)"
        )


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True, timeout=30)


def code_tree_revision(repo: Path = REPO_ROOT) -> str:
    """``trees:<hash>`` of ``eve_model/`` + ``infra/`` (``+dirty.<diff hash>`` with uncommitted changes).

    ``EVE_CODE_REVISION`` wins when set (jobs on nodes without the checkout); ``unversioned`` when
    neither git nor the variable can tell.
    """
    if os.environ.get(CODE_REVISION_ENV):
        return os.environ[CODE_REVISION_ENV]
    try:
        trees = _git(repo, "rev-parse", "HEAD:eve_model", "HEAD:infra").stdout.decode().split()
        diff = _git(repo, "diff", "HEAD", "--", "eve_model", "infra").stdout
    except (OSError, subprocess.SubprocessError):
        return "unversioned"
    revision = "trees:" + hashlib.sha256(" ".join(trees).encode()).hexdigest()[:20]
    if diff:
        return f"{revision}+dirty.{hashlib.sha256(diff).hexdigest()[:12]}"
    return revision


def platform_commit(repo: Path = REPO_ROOT) -> str:
    """The checked-out commit of the whole repository (``+dirty`` when tracked files are modified)."""
    try:
        head = _git(repo, "rev-parse", "HEAD").stdout.decode().strip()
        dirty = _git(repo, "status", "--porcelain", "--untracked-files=no").stdout.decode().strip()
    except (OSError, subprocess.SubprocessError):
        return "unversioned"
    return f"{head}+dirty" if dirty else head


__all__ = [
    "CODE_REVISION_ENV",
    "MODEL_FILE_PATTERNS",
    "WeightsMismatch",
    "code_tree_revision",
    "file_sha256",
    "is_model_file",
    "model_files",
    "platform_commit",
    "verify_weights",
    "weights_sha256",
]
