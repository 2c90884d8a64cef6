"""``python -m pvtv2_fast info`` and ``classify``."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pvtv2_fast import PvtV2Config, PvtV2ForImageClassification
from pvtv2_fast.__main__ import main
from pvtv2_fast.preprocessing import PvtV2ImageProcessor
from conftest import randomize_


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name, params in [("b0", "3.67"), ("b2_linear", "22.55"), ("b5", "81.96")]:
        assert f"| {name} | {params} |" in out
    assert "32×56×56" in out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    labels = {i: f"class_{i}" for i in range(7)}
    model = randomize_(PvtV2ForImageClassification(PvtV2Config(id2label=labels))).eval()
    model.save_pretrained(folder)
    PvtV2ImageProcessor().save_pretrained(folder)
    return folder, model


def test_classify(checkpoint, tmp_path, capsys):
    folder, model = checkpoint
    path = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(path)
    assert main(["classify", str(path), "--weights", str(folder), "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == str(path) and len(lines) == 4
    pixel_values = PvtV2ImageProcessor()(Image.open(path))["pixel_values"]
    best = model(pixel_values).logits.argmax().item()
    assert lines[1].split()[-1] == f"class_{best}"


def test_classify_errors(checkpoint, tmp_path, capsys):
    folder, _ = checkpoint
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["classify", str(bad), "--weights", str(folder)]) == 1
    assert "cannot read image" in capsys.readouterr().err
    assert main(["classify", str(bad), "--weights", str(tmp_path / "none")]) == 2
    assert "error:" in capsys.readouterr().err


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "pvtv2_fast", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "classify" in result.stdout
