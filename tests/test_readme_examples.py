"""Every example of README.md runs as written (issue 17): the ```python blocks with exec and
each `qrt ...` line of the ```bash blocks through the CLI, in document order, in a folder
holding the files they name, built here: model.onnx (an MLP x[batch, 20] -> ... with a layer
named classifier), calib.npz, calib_dir/, x.npy, a tiny BERT bert.onnx with its tokenizer tok/
and sentences.txt, and a tiny sentence-transformers folder all-MiniLM-L6-v2/ with texts.txt.
The two fresh-machine commands (venv + pip) are not run here: CI runs the test command, and
tests/test_cli.py the demo. Timing loops are shortened (what they measure is not checked)."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")
pytest.importorskip("sklearn")

from runtime.cli import main  # noqa: E402
from tests.hf_folders import TEXTS, sentence_transformers_folder, transformers_folder  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> list[tuple[str, str, int]]:
    """(language, code, first line number) of every fenced block of README.md."""
    out, lang, start, lines = [], None, 0, []
    for n, line in enumerate(README.read_text().splitlines(), start=1):
        if line.startswith("```"):
            if lang is None:
                lang, start, lines = line[3:].strip(), n + 1, []
            else:
                out.append((lang, "\n".join(lines), start))
                lang = None
        elif lang is not None:
            lines.append(line)
    return out


def _mlp_onnx(path: Path) -> None:
    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(20, 32)
            self.fc2 = torch.nn.Linear(32, 32)
            self.classifier = torch.nn.Linear(32, 4)

        def forward(self, x):
            return self.classifier(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
    torch.manual_seed(0)
    torch.onnx.export(MLP().eval(), (torch.randn(2, 20),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    _mlp_onnx(tmp_path / "model.onnx")
    x = np.random.default_rng(0).standard_normal((64, 20)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    (tmp_path / "calib_dir").mkdir()
    np.save(tmp_path / "calib_dir" / "x.npy", x)
    np.save(tmp_path / "x.npy", x[:4])
    sentence_transformers_folder(tmp_path / "all-MiniLM-L6-v2")
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    (tmp_path / "sentences.txt").write_text("\n".join(t for t in TEXTS if t) + "\n")
    tok = transformers_folder(tmp_path / "tok", positions=128)   # a tokenizer folder (and its BERT): --seq-len 128
    from runtime.convert.hf import export_folder, read_folder
    (tmp_path / "bert.onnx").write_bytes(export_folder(read_folder(tok))[0])
    monkeypatch.chdir(tmp_path)
    # shorter timing loops: these run the commands, they do not measure
    from runtime import demo
    from runtime.bench import gemm
    monkeypatch.setattr(demo, "BATCH1_SECONDS", 0.005)
    monkeypatch.setattr(demo, "BATCHN_SECONDS", 0.01)
    monkeypatch.setattr(demo, "MAX_ITER", 5)
    monkeypatch.setattr(gemm, "MIN_SECONDS", 0.01)
    return tmp_path


def test_every_readme_example_runs(workdir, capsys):
    ran = {"python": 0, "qrt": 0}
    namespace: dict = {}
    for lang, code, line in blocks():
        if lang == "python":
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
            ran["python"] += 1
        elif lang == "bash":
            for k, text in enumerate(code.splitlines()):
                command = text.split(" #")[0].strip()
                if not command.startswith("qrt "):
                    continue
                argv = shlex.split(command)[1:]
                if argv[0] == "bench":
                    argv.append("--keep-blas-env")       # no re-exec of the test process
                try:
                    rc = main(argv)
                except SystemExit as e:
                    rc = e.code
                err = capsys.readouterr().err
                assert rc == 0, f"README.md:{line + k}: {command}\n{err}"
                ran["qrt"] += 1
    assert ran["python"] >= 3 and ran["qrt"] >= 20, ran
    assert os.path.isfile("minilm.qrt") and np.load("embeddings.npy").shape == (len(TEXTS), 32)
