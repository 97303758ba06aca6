from __future__ import annotations

import multiprocessing
import stat

import numpy as np
import pytest
import torch

from segmote_monai.data.cache import EmbeddingCache

PRE = {"size": 64, "modality": "MR", "percentiles": [0.5, 99.5]}


def _cache(directory, **overrides):
    kwargs = {"backbone_name": "tiny", "backbone_sha256": "a" * 64, "preprocessing": PRE, **overrides}
    return EmbeddingCache(directory, **kwargs)


class CountingEncoder:
    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += len(images)
        return images.mean(dim=1, keepdim=True).repeat(1, 8, 1, 1)[:, :, ::4, ::4] * 3.0


def test_miss_then_hit_gives_the_same_embeddings(tmp_path):
    cache, encoder = _cache(tmp_path / "c"), CountingEncoder()
    images = torch.rand(3, 3, 16, 16)
    first = cache.embed(images, encoder)
    second = cache.embed(images, encoder)
    assert encoder.calls == 3 and (cache.hits, cache.misses) == (3, 3)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(second, encoder(images), rtol=1e-3, atol=1e-3)  # float16 storage
    assert second.dtype == torch.float32


def test_only_missing_entries_are_computed(tmp_path):
    cache, encoder = _cache(tmp_path / "c"), CountingEncoder()
    images = torch.rand(4, 3, 16, 16)
    cache.embed(images[:2], encoder)
    out = cache.embed(images, encoder)
    assert encoder.calls == 4 and out.shape == (4, 8, 4, 4)


def test_reused_across_instances_and_runs(tmp_path):
    images, encoder = torch.rand(2, 3, 16, 16), CountingEncoder()
    _cache(tmp_path / "c").embed(images, encoder)
    again = _cache(tmp_path / "c")
    again.embed(images, encoder)
    assert encoder.calls == 2 and again.hits == 2


@pytest.mark.parametrize(
    "change",
    [
        "one_pixel",
        "backbone_name",
        "backbone_weights",
        "preprocessing",
    ],
)
def test_invalidation(tmp_path, change):
    image = torch.rand(1, 3, 16, 16)
    reference = _cache(tmp_path / "c")
    key = reference.key(image[0])
    if change == "one_pixel":
        changed = image.clone()
        changed[0, 1, 7, 9] += 1e-3
        assert reference.key(changed[0]) != key
        return
    overrides = {
        "backbone_name": {"backbone_name": "lite_medsam"},
        "backbone_weights": {"backbone_sha256": "b" * 64},
        "preprocessing": {"preprocessing": {**PRE, "size": 128}},
    }[change]
    assert _cache(tmp_path / "c", **overrides).key(image[0]) != key
    assert _cache(tmp_path / "c").key(image[0]) == key  # and the key itself is stable


def test_key_names_no_patient_or_path(tmp_path):
    cache = _cache(tmp_path / "c")
    key = cache.key(torch.rand(3, 8, 8))
    assert len(key) == 64 and int(key, 16) >= 0
    cache.store(key, torch.zeros(2, 2, 2))
    assert [p.name for p in cache.entries()] == [f"{key}.npy"]


def test_folder_is_owner_only(tmp_path):
    cache = _cache(tmp_path / "c")
    cache.store(cache.key(torch.rand(3, 8, 8)), torch.zeros(2))
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700


def test_damaged_entry_is_recomputed(tmp_path):
    cache, encoder = _cache(tmp_path / "c"), CountingEncoder()
    images = torch.rand(1, 3, 16, 16)
    cache.embed(images, encoder)
    cache.entries()[0].write_bytes(b"broken")
    cache.embed(images, encoder)
    assert encoder.calls == 2
    assert np.load(cache.entries()[0]).shape == (8, 4, 4)


def test_size_bound_evicts_least_recently_used(tmp_path):
    entry_bytes = 8 * 4 * 4 * 2
    cache = _cache(tmp_path / "c", max_bytes=5 * entry_bytes + 50)
    encoder = CountingEncoder()
    for i in range(12):
        cache.embed(torch.full((1, 3, 16, 16), float(i)), encoder)
    cache.prune()
    assert cache.size_bytes() <= cache.max_bytes
    assert 1 <= len(cache.entries()) <= 5
    cache.clear()
    assert cache.entries() == [] and (tmp_path / "c").is_dir()


def _writer(args):
    directory, seed = args
    cache = _cache(directory)
    torch.manual_seed(0)  # every process writes the same entries
    images = torch.rand(6, 3, 32, 32)
    for _ in range(3):
        for image in images:
            cache.store(cache.key(image), image[:1].repeat(16, 1, 1) * (seed * 0 + 1))
    return [cache.key(image) for image in images]


def test_concurrent_writers_leave_valid_entries(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        keys = pool.map(_writer, [(tmp_path / "c", 0), (tmp_path / "c", 1)])
    assert keys[0] == keys[1]
    cache = _cache(tmp_path / "c")
    torch.manual_seed(0)
    images = torch.rand(6, 3, 32, 32)
    for key, image in zip(keys[0], images):
        torch.testing.assert_close(cache.load(key), image[:1].repeat(16, 1, 1).half())
    assert sorted(p.name for p in cache.entries()) == sorted(f"{k}.npy" for k in keys[0])
    assert not [p for p in (tmp_path / "c").rglob(".*")]  # no temporary file left


def test_bad_bound():
    with pytest.raises(ValueError, match="max_bytes must be > 0, got 0"):
        EmbeddingCache("/tmp/unused", backbone_name="tiny", backbone_sha256="a", preprocessing={}, max_bytes=0)
