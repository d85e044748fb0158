"""Sentence embeddings on Ray (runtime/ray_embed.py, `qrt embed --ray`), on a real local Ray
cluster this module starts (2 CPUs): the same bits as one process for an int8 model, with
2 actors, each a process with its own qrt session on a node-local copy of the .qrt."""
from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")

from runtime import ray_embed  # noqa: E402
from runtime.cli import main  # noqa: E402
from runtime.text import TextEncoder  # noqa: E402
from tests.hf_folders import TEXTS, sentence_transformers_folder  # noqa: E402

MANY = [f"{t} {i}" for i in range(6) for t in TEXTS]        # 42 texts of many lengths


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray")
    out = d / "m8.qrt"
    assert main(["convert", str(sentence_transformers_folder(d / "st")), "-o", str(out), "--quant", "int8", "-q"]) == 0
    return out


def test_embed_texts_gives_the_single_process_bits(cluster, model):
    want = TextEncoder(model).encode(MANY, batch_size=4)
    got = ray_embed.embed_texts(MANY, model, batch_size=4, actors=2)
    assert got.dtype == np.float32 and np.array_equal(got, want)


def test_cli_embed_on_ray_matches_embed(cluster, model, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(MANY) + "\n")
    assert main(["embed", str(model), "-i", str(texts), "-o", str(tmp_path / "one.npy"), "-q"]) == 0
    capsys.readouterr()
    assert main(["embed", str(model), "-i", str(texts), "-o", str(tmp_path / "ray.npy"), "--ray", "local",
                 "--actors", "2"]) == 0
    out, err = capsys.readouterr()
    assert "Ray at local (2 CPUs)" in out and f"embed: {len(MANY)}/{len(MANY)}" in err
    assert np.array_equal(np.load(tmp_path / "ray.npy"), np.load(tmp_path / "one.npy"))


def test_embed_dataset_adds_an_embedding_column(cluster, model):
    ds = ray.data.from_items([{"text": t, "id": i} for i, t in enumerate(MANY)])
    rows = sorted(ray_embed.embed_dataset(ds, model, batch_size=8, actors=2).take_all(), key=lambda r: r["id"])
    assert [r["text"] for r in rows] == MANY
    got = np.stack([r["embedding"] for r in rows])
    # other batches than encode's (Ray's blocks), hence other padding: equal to rounding
    np.testing.assert_allclose(got, TextEncoder(model).encode(MANY), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no column 'sentence'"):
        ray_embed.embed_dataset(ds, model, text_column="sentence")


def test_ray_argument_errors(model, tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("hello\n")
    assert main(["embed", str(model), "-i", str(texts), "-o", str(tmp_path / "e.npy"), "--actors", "2"]) == 1
    assert "--actors applies to --ray only" in capsys.readouterr().err
