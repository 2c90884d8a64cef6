"""``python -m pvtv2_fast info``, ``classify`` and ``segment``: results, batches that finish past bad images,
exit status (0 all done, 1 some images failed, 2 usage or fatal error), argument and library errors."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import randomize_
from PIL import Image
from test_preprocessing import _header_only_png

from pvtv2_fast import PvtV2Config, PvtV2ForImageClassification, PvtV2ForSemanticSegmentation
from pvtv2_fast.__main__ import main
from pvtv2_fast.preprocessing import PvtV2ImageProcessor
from pvtv2_fast.segmentation import segment

# The classifier's processor resizes to 64² (its preprocessor_config.json): small forwards, same code path.
SIZE = 64


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
    model = randomize_(PvtV2ForImageClassification(PvtV2Config.from_preset("b0", id2label=labels))).eval()
    model.save_pretrained(folder)
    PvtV2ImageProcessor(size=SIZE).save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg")
    config = PvtV2Config.from_preset("b0", num_labels=5, decoder_hidden_size=32)
    model = randomize_(PvtV2ForSemanticSegmentation(config)).eval()
    model.save_pretrained(folder)
    return folder, model


def _save(path, h=40, w=48, seed=0, **kwargs):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, **kwargs)
    return path


def _line(text, prefix):
    """The one line of ``text`` that starts with ``prefix``."""
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, (prefix, text)
    return lines[0]


def _no_traceback(captured):
    assert "Traceback" not in captured.out + captured.err


def test_classify(checkpoint, tmp_path, capsys):
    folder, model = checkpoint
    path = _save(tmp_path / "cat.png", 80, 100)
    assert main(["classify", str(path), "--weights", str(folder), "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == str(path) and len(lines) == 4
    pixel_values = PvtV2ImageProcessor(size=SIZE)(Image.open(path))["pixel_values"]
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


def test_classify_batch_skips_bad_images(checkpoint, tmp_path, capsys):
    """Every kind of bad image is reported and skipped; the good ones before and after it are classified."""
    folder, _ = checkpoint
    good = _save(tmp_path / "good.png")
    good16 = tmp_path / "good16.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 65536, (40, 48), dtype=np.uint16)).save(good16)
    (tmp_path / "text.png").write_text("not an image")
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _save(tmp_path / "big.png", 100, 120)
    Image.fromarray(np.full((40, 48), 2.5, np.float32)).save(tmp_path / "range.tif")  # float outside [0, 1]
    names = ["text.png", "good.png", "cut.png", "big.png", "range.tif", "good16.png"]
    status = main(
        [
            "classify",
            *(str(tmp_path / n) for n in names),
            "--weights",
            str(folder),
            "--top",
            "2",
            "--max-pixels",
            "10000",
        ]
    )
    captured = capsys.readouterr()
    assert status == 1
    printed = [line for line in captured.out.splitlines() if not line.startswith(" ")]
    assert printed == [str(good), str(good16)]
    reasons = {
        "text.png": "cannot read image",
        "cut.png": "cannot decode image",
        "big.png": "image is 120×100 = 12000 pixels, over the limit of 10000 pixels",
        "range.tif": "values in [2.5, 2.5], outside its known range [0, 1]",
    }
    summary = captured.err[captured.err.index("4 of 6 images failed:") :]
    for name, reason in reasons.items():
        assert reason in _line(captured.err, f"{tmp_path / name}: skipped: ")
        assert reason in _line(summary, f"  {tmp_path / name}: ")
    assert "good" not in summary
    _no_traceback(captured)


def test_classify_decompression_bomb_is_skipped(checkpoint, tmp_path, capsys, monkeypatch):
    """--max-pixels (default 268 Mpx) decides from the header, in place of PIL's guard: a bomb is skipped, and an
    image over PIL's limit (made 500 pixels here, so a 48×40 image is over it) but under ours is classified."""
    folder, _ = checkpoint
    _header_only_png(tmp_path / "bomb.png", 30000, 30000)  # 900 Mpx claimed, a few bytes on disk
    good = _save(tmp_path / "good.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    assert main(["classify", str(tmp_path / "bomb.png"), str(good), "--weights", str(folder)]) == 1
    captured = capsys.readouterr()
    assert "30000×30000 = 900.0 Mpx, over the limit of 268.4 Mpx" in captured.err
    assert captured.out.splitlines()[0] == str(good)
    assert Image.MAX_IMAGE_PIXELS == 500  # the CLI lifts PIL's process-wide guard only while it runs
    _no_traceback(captured)


def test_segment_batch_finishes(segmenter, tmp_path, capsys):
    weights, model = segmenter
    images, other, out = tmp_path / "images", tmp_path / "other", tmp_path / "out"
    images.mkdir()
    other.mkdir()
    _save(images / "a.png", 40, 48)
    _save(images / "tiny.png", 20, 20)  # under b0's 29² minimum
    _save(images / "big.png", 80, 90)
    (images / "text.png").write_text("not an image")
    stored = np.random.default_rng(4).integers(0, 256, (36, 52, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90° clockwise: 52 high, 36 wide
    Image.fromarray(stored).save(images / "rot.png", exif=exif)
    Image.fromarray(np.random.default_rng(5).integers(0, 65536, (33, 41), dtype=np.uint16)).save(images / "c16.png")
    _save(other / "a.png", 40, 48, seed=9)  # same name as images/a.png: must not overwrite its masks
    status = main(
        [
            "segment",
            str(images),
            str(other / "a.png"),
            "--weights",
            str(weights),
            "--out",
            str(out),
            "--max-pixels",
            "5000",
        ]
    )
    captured = capsys.readouterr()
    assert status == 1
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{stem}_{kind}.png" for stem in ("a", "rot", "c16") for kind in ("labels", "overlay"))
    assert "wrote 6 files" in captured.out
    summary = captured.err[captured.err.index("4 of 7 images failed:") :]
    for name, reason in [
        (images / "tiny.png", "input image 20×20 is too small"),
        (images / "big.png", "image is 90×80 = 7200 pixels, over the limit of 5000 pixels"),
        (images / "text.png", "cannot read image"),
        (other / "a.png", f"would overwrite those of {images / 'a.png'}"),
    ]:
        assert reason in _line(summary, f"  {name}: ")
    # the EXIF-rotated image is segmented as viewers show it
    labels = np.array(Image.open(out / "rot_labels.png"))
    upright = np.ascontiguousarray(np.rot90(stored, -1))
    x = PvtV2ImageProcessor(do_resize=False)(upright)["pixel_values"]
    assert labels.shape == (52, 36)
    assert np.array_equal(labels, segment(model, x).argmax(1)[0].numpy())
    # the 16-bit image's overlay is its 8-bit picture blended with the label colours, not white
    overlay = np.asarray(Image.open(out / "c16_overlay.png"), np.float32)
    assert overlay.mean() < 200
    _no_traceback(captured)


@pytest.mark.parametrize(
    "args,message",
    [
        (["classify", "{img}", "--top", "-1"], "argument --top: expected a positive integer, got -1"),
        (["classify", "{img}", "--top", "0"], "argument --top: expected a positive integer, got 0"),
        (["classify", "{img}", "--top", "x"], "argument --top: expected a positive integer, got 'x'"),
        (["classify", "{img}", "--max-pixels", "-5"], "argument --max-pixels: expected a whole number of pixels"),
        (["classify", "{img}", "--max-pixels", "lots"], "argument --max-pixels: expected a number of pixels"),
        (["classify", "{img}", "{tmp}/missing.png"], "classify: no such file or folder: {tmp}/missing.png"),
        (["segment", "{img}", "--out", "{tmp}", "--tile", "0"], "argument --tile: expected a positive integer, got 0"),
        (["segment", "{img}", "--out", "{tmp}", "--tile", "-3"], "argument --tile: expected a positive integer"),
        (
            ["segment", "{img}", "--out", "{tmp}", "--tile", "32", "--stride", "48"],
            "--stride (48) must be at most --tile",
        ),
        (["segment", "{img}", "--out", "{tmp}", "--stride", "8"], "--stride needs --tile"),
        (["segment", "{tmp}/nothing", "--out", "{tmp}"], "segment: no such file or folder"),
        (
            ["segment", "{img}", "--out", "{tmp}", "--stride", "0", "--tile", "8"],
            "argument --stride: expected a positive",
        ),
    ],
)
def test_argument_errors_are_usage_errors(args, message, tmp_path, capsys):
    img = _save(tmp_path / "x.png")
    fill = lambda s: s.format(img=img, tmp=tmp_path)  # noqa: E731
    with pytest.raises(SystemExit) as exit_info:  # before any weights are read: the folder need not exist
        main([fill(a) for a in args] + ["--weights", str(tmp_path / "weights")])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "usage:" in captured.err and fill(message) in captured.err
    _no_traceback(captured)


def test_library_errors_are_one_line(segmenter, tmp_path, capsys):
    weights, _ = segmenter
    img = _save(tmp_path / "x.png")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    (tmp_path / "file").write_text("")
    for argv in (
        ["classify", str(img), "--weights", str(tmp_path / "missing")],
        ["classify", str(img), "--weights", str(junk)],
        ["segment", str(img), "--weights", str(weights), "--out", str(tmp_path / "file")],
    ):
        assert main(argv) == 2
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
        _no_traceback(captured)


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "pvtv2_fast", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "classify" in result.stdout and "Exit status" in result.stdout


def test_segment_files_library_twin(segmenter, tmp_path):
    """``segmentation.segment_files`` (the library's batch loop) reads images as the command does and goes on
    past bad ones."""
    from pvtv2_fast.segmentation import segment_files

    weights, model = segmenter
    stored = np.random.default_rng(4).integers(0, 256, (36, 52, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8  # shown turned 90° counter-clockwise
    Image.fromarray(stored).save(tmp_path / "rot.png", exif=exif)
    _save(tmp_path / "tiny.png", 20, 20)
    (tmp_path / "text.png").write_text("not an image")
    written, errors = segment_files(
        model, [tmp_path / n for n in ("tiny.png", "text.png", "rot.png")], tmp_path / "out", progress=False
    )
    assert [p.name for p in written] == ["rot_labels.png", "rot_overlay.png"]
    assert len(errors) == 2 and "too small" in errors[0] and "cannot read image" in errors[1]
    overlay = np.asarray(Image.open(tmp_path / "out" / "rot_overlay.png"))
    assert overlay.shape == (52, 36, 3)
