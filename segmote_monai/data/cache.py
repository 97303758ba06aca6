"""An on-disk cache of the frozen encoder's output.

The encoder is frozen, so its output for a given pre-processed slice never changes: it is computed once
and reused across epochs and runs (LiteMedSAM's encoder is ~90% of a CPU training step).

**Key**: SHA-256 of the network input itself (dtype, shape, bytes of the pre-processed, normalised slice),
the backbone's name and weights hash, and the pre-processing parameters given by the caller. Never a
patient name or a path. Any change to the image (one pixel), the backbone or the pre-processing gives
another key, so an entry can't be stale.

**What can be cached**: everything deterministic up to the network input: loading, reorientation,
intensity scaling, slicing, resize + pad, backbone normalisation. Random spatial or intensity
augmentations change the input every epoch and so can't be cached: put them before the cache only if you
accept a miss every time (or don't use the cache). Prompt sampling (class choice, box jitter, points) and
PPT carriers act after the encoder and are free to stay random.

**Concurrency**: each entry is written to a unique temporary name in its folder and renamed into place,
so DataLoader workers and DDP ranks can read and write at once; a reader sees a whole entry or none.

**Size**: bounded by ``max_bytes``; the least recently used entries are removed past it. Clear it with
:meth:`EmbeddingCache.clear` or by deleting the folder. The folder is created readable by its owner only.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["EmbeddingCache"]


class EmbeddingCache:
    """Frozen-encoder outputs on disk, one ``.npy`` file per slice.

    Args:
        directory: where entries live (created with mode 0700).
        backbone_name, backbone_sha256: the backbone's identity (``SegMoTE.backbone_name`` / ``_sha256``).
        preprocessing: the parameters that made the network input (e.g. size, modality scaling).
        max_bytes: size bound; least recently used entries go first.
        dtype: storage dtype (float16 halves the size; embeddings come back as float32).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        backbone_name: str,
        backbone_sha256: str,
        preprocessing: Mapping[str, Any],
        max_bytes: int = 20 * 2**30,
        dtype: torch.dtype = torch.float16,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        identity = {"backbone": backbone_name, "weights_sha256": backbone_sha256,
                    "preprocessing": dict(preprocessing), "dtype": str(dtype)}
        self._prefix = json.dumps(identity, sort_keys=True, default=str).encode()
        self.max_bytes = int(max_bytes)
        self.dtype = dtype
        self.hits = 0
        self.misses = 0
        self._written_since_prune = 0

    @classmethod
    def for_model(cls, directory: str | os.PathLike, model: torch.nn.Module, preprocessing: Mapping[str, Any],
                  **kwargs: Any) -> EmbeddingCache:
        """A cache keyed by ``model``'s backbone (a :class:`~segmote_monai.networks.SegMoTE`)."""
        return cls(directory, backbone_name=model.backbone_name, backbone_sha256=model.backbone_sha256,
                   preprocessing=preprocessing, **kwargs)

    def key(self, image: torch.Tensor) -> str:
        """The key of one network input [3, H, W]."""
        array = np.ascontiguousarray(torch.as_tensor(image).detach().cpu().numpy())
        digest = hashlib.sha256(self._prefix)
        digest.update(f"{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npy"

    def load(self, key: str) -> torch.Tensor | None:
        """The cached embedding for ``key``, or None."""
        path = self._path(key)
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):  # a damaged entry (disk full, manual edit): recompute it
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # recency for the size bound
        except FileNotFoundError:
            pass
        return torch.from_numpy(array)

    def store(self, key: str, embedding: torch.Tensor) -> None:
        """Writes one entry atomically (unique temporary name, then rename)."""
        path = self._path(key)
        path.parent.mkdir(exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{uuid.uuid4().hex}.tmp.npy")
        array = embedding.detach().to("cpu", self.dtype).numpy()
        try:
            np.save(tmp, array, allow_pickle=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._written_since_prune += array.nbytes
        if self._written_since_prune > self.max_bytes // 20:
            self.prune()

    def embed(self, images: torch.Tensor, encoder: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """[B, 3, H, W] network inputs -> [B, D, h, w] float32 embeddings on ``images.device``: cached ones
        are read, the others computed by ``encoder`` in one batch and stored."""
        keys = [self.key(image) for image in images]
        found = [self.load(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            with torch.no_grad():
                computed = encoder(images[missing])
            for i, embedding in zip(missing, computed):
                self.store(keys[i], embedding)
                found[i] = embedding.to(self.dtype)  # a miss gives what a later hit will: runs don't depend on it
        return torch.stack([f.to(images.device, torch.float32) for f in found])

    def entries(self) -> list[Path]:
        return [p for p in self.directory.glob("??/*.npy") if not p.name.startswith(".")]

    def size_bytes(self) -> int:
        total = 0
        for path in self.entries():
            try:
                total += path.stat().st_size
            except FileNotFoundError:  # removed by another process meanwhile
                pass
        return total

    def prune(self) -> None:
        """Removes the least recently used entries until the cache is within 90% of ``max_bytes``."""
        self._written_since_prune = 0
        stats = []
        for path in self.entries():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            stats.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in stats)
        for _, size, path in sorted(stats, key=lambda s: s[0]):
            if total <= 0.9 * self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def clear(self) -> None:
        """Removes every entry (the folder stays)."""
        for path in self.entries():
            path.unlink(missing_ok=True)
