"""scripts/screenshots.py names a screenshot after its page's folder path and never overwrites another page's (no
browser needed: the names and the refusal come before the browser starts)."""

from __future__ import annotations

import hashlib

from PIL import Image, PngImagePlugin

from .conftest import load_script


def _page(folder):
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<html></html>")
    return folder / "report.html"


def _shot(path, source):
    info = PngImagePlugin.PngInfo()
    info.add_text("Source", str(source.resolve()))
    Image.new("RGB", (4, 4), "white").save(path, pnginfo=info)


def test_two_report_pages_get_two_names(tmp_path, monkeypatch):
    shots = load_script("screenshots")
    monkeypatch.chdir(tmp_path)
    a, b = _page(tmp_path / "study-a" / "report"), _page(tmp_path / "study-b" / "report")
    assert shots.shot_name(a, 1400) == "study-a_report_report-1400.png"
    assert shots.shot_name(b, 800) == "study-b_report_report-800.png"
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # outside the current folder: the absolute path
    assert shots.shot_name(a, 1400) == "_".join((*tmp_path.resolve().parts[1:], "study-a_report_report-1400.png"))


def test_a_name_holding_another_pages_screenshot_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    shots = load_script("screenshots")
    monkeypatch.chdir(tmp_path)
    a, b = _page(tmp_path / "a" / "report"), _page(tmp_path / "b" / "report")
    out = tmp_path / "shots"
    out.mkdir()
    target = out / shots.shot_name(a, 1400)
    _shot(target, b)  # a colliding name (renamed by hand, say) that shows b's page
    (out / shots.shot_name(a, 800)).write_text("the user's notes")  # not written by the script
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    assert shots.main([str(a), str(out), "--widths", "1400,800", "--browser", "no-such-browser"]) == 2
    err = capsys.readouterr().err
    assert f"{target} is a screenshot of {b.resolve()}; not overwritten" in err
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()} == before
    assert shots.refusal(a, [out / shots.shot_name(a, 800)]).endswith(
        "is a file this script did not write; not overwritten (give another OUT_DIR)")
    _shot(target, a)  # a's own earlier screenshot: written again
    assert shots.refusal(a, [target]) is None
