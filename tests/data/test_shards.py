import io
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.conftest import jpeg, rgb
from vora_core.catalog import SyntheticShapesSource
from vora_core.data.shards import ShardReader, ShardWriter, build_index, index_path, iter_samples
from vora_core.data.sources import synthetic_shape, write_synthetic_shapes
from vora_core.errors import DataError


def test_writer_index_and_random_access(tmp_path):
    tar = tmp_path / "00007.tar"
    body = jpeg(rgb())
    with ShardWriter(tar) as w:
        for i in range(5):
            w.write(f"k{i}", {"jpg": body, "txt": f"caption {i}", "json": {"i": i}})
        w.commit(pa.table({"key": [f"k{i}" for i in range(5)]}), {"count": 5})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00007.idx.parquet", "00007.parquet", "00007.tar", "00007_stats.json"]
    index = pq.read_table(index_path(tar))
    assert index.num_rows == 15
    assert index.equals(build_index(tar))
    with tarfile.open(tar) as t:  # offsets point at the member data
        member = t.getmember("k3.txt")
        assert index.filter(pa.compute.equal(index["key"], "k3")).to_pylist()[1]["offset"] == member.offset_data
    with ShardReader(tar) as r:
        assert len(r) == 5 and "k4" in r
        assert r.read("k3", "txt") == b"caption 3"
        assert r.meta("k2") == {"i": 2}
        assert r.image("k0").size == (60, 40)
        with pytest.raises(DataError, match="no sample with key 'nope'"):
            r.read("nope", "jpg")
        with pytest.raises(DataError, match=r"sample 'k1' has no \.png \(has: jpg, txt, json\)"):
            r.read("k1", "png")
    assert [k for k, _ in iter_samples(tar)] == [f"k{i}" for i in range(5)]


def test_failed_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "00000.tar") as w:
            w.write("a", {"txt": "x"})
            raise RuntimeError("crash mid-shard")
    assert list(tmp_path.iterdir()) == []


def test_missing_index_is_a_clear_error(tmp_path):
    tar = tmp_path / "00001.tar"
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataError, match="00001.idx.parquet: tar index missing"):
        ShardReader(tar)


def test_synthetic_shapes_deterministic_and_labelled(tmp_path):
    src = SyntheticShapesSource(kind="synthetic_shapes", n=12, heldout=3, seed=5)
    train_a, held_a = write_synthetic_shapes(src, tmp_path / "a")
    train_b, held_b = write_synthetic_shapes(src, tmp_path / "b")
    cols = ["shape", "colour", "position", "size", "background", "width", "height", "caption"]
    assert train_a.select(cols).equals(train_b.select(cols))
    assert (train_a.num_rows, held_a.num_rows) == (12, 3)
    for a, b in zip(train_a.column("file").to_pylist(), train_b.column("file").to_pylist(), strict=True):
        assert open(a, "rb").read() == open(b, "rb").read()
    sizes = set(zip(train_a.column("width").to_pylist(), train_a.column("height").to_pylist(), strict=True))
    assert any(w != h for w, h in sizes)  # non-square images
    import random

    img, labels = synthetic_shape(random.Random(0), 64, 64)
    assert labels["caption"] == (
        f"A {labels['size']} {labels['colour']} {labels['shape']} in the {labels['position']} "
        f"of a {labels['background']} background."
    )


def test_synthetic_shapes_stay_inside_the_picture():
    """A shape cut by the border would be mislabelled (a clipped square is a rectangle)."""
    import random

    import numpy as np

    from vora_core.data.sources import BACKGROUNDS

    rng = random.Random(1)
    for _ in range(200):
        img, labels = synthetic_shape(rng, 48, 160, scale=1.6)
        background = np.array(BACKGROUNDS[labels["background"]])
        pixels = np.asarray(img)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        assert (border == background).all(), labels
        assert (pixels != background).any(axis=-1).sum() > 0.02 * pixels.shape[0] * pixels.shape[1]
