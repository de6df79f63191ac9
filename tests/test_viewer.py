"""The HTML viewer: built in Python, checked in a real headless browser (Chromium from the OS
packages, driven by Playwright); the browser cases skip when either is missing."""

import json
import re
import shutil

import pytest
import torch

from monai_emma.cli import main
from monai_emma.fidelity import fidelity_report
from monai_emma.fusion import fuse_volumes
from monai_emma.networks import UFuser
from monai_emma.viewer import viewer_html, write_viewer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UFuser().eval()


@pytest.fixture(scope="module")
def pet_fusion(phantom_volume_files, net):
    nifti = phantom_volume_files["nifti"]
    return fuse_volumes(nifti["mri"], nifti["pet"], model=net, precision="fp32")


def _data(page: str) -> dict:
    return json.loads(re.search(r'<script id="emma-data" type="application/json">(.*?)</script>', page, re.S).group(1))


def test_page_is_self_contained(pet_fusion, tmp_path):
    report = fidelity_report(pet_fusion)
    page = viewer_html(pet_fusion, report)
    assert "http://" not in page and "https://" not in page and "<script src" not in page  # opens offline
    data = _data(page)
    assert data["shape"][0] == pet_fusion.fused.shape[-1]  # axial slices first
    assert len(data["report"]["slices"]) == data["shape"][0]
    assert data["labels"]["other"] == "PET" and set(data["volumes"]) == {"anatomical", "other", "fused"}
    path = write_viewer(pet_fusion, tmp_path / "v.html", report)
    with pytest.raises(FileExistsError):
        write_viewer(pet_fusion, path, report)


def _browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    return sync_api


def _open(sync_api, path):
    """Yield (page, console errors) for a file in headless Chromium."""
    p = sync_api.sync_playwright().start()
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    browser = p.chromium.launch(executable_path=CHROMIUM, args=[*args, "--disable-sync", "--no-first-run"])
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_function("window.emmaViewer && window.emmaViewer.ready", timeout=60_000)
    return p, browser, page, errors


PIXELS = """(id) => { const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = 0, h = 0;
  for (let i = 0; i < d.length; i += 4) { s += d[i] + d[i + 1] + d[i + 2]; h = (h * 31 + d[i]) >>> 0; }
  return [s, h]; }"""


def test_viewer_in_a_headless_browser(pet_fusion, tmp_path):
    sync_api = _browser()
    path = write_viewer(pet_fusion, tmp_path / "viewer.html", fidelity_report(pet_fusion))
    p, browser, page, errors = _open(sync_api, path)
    try:
        views = [
            f"{plane}-{layer}"
            for plane in ("axial", "coronal", "sagittal")
            for layer in ("anatomical", "other", "fused", "overlay")
        ]
        for view in views:  # every view draws an image
            assert page.evaluate(PIXELS, view)[0] > 0, view
        before = page.evaluate(PIXELS, "axial-fused")
        k = page.evaluate("window.emmaViewer.state.k")
        page.locator("#k").fill(str(max(0, k - 5)))  # the axial slider
        assert page.evaluate("window.emmaViewer.state.k") == max(0, k - 5)
        assert page.evaluate(PIXELS, "axial-fused") != before
        # the opacity changes the overlay only
        fused, overlay = page.evaluate(PIXELS, "axial-fused"), page.evaluate(PIXELS, "axial-overlay")
        page.locator("#opacity").fill("100")
        assert page.evaluate(PIXELS, "axial-fused") == fused and page.evaluate(PIXELS, "axial-overlay") != overlay
        # the window changes the grey images
        page.locator("#whi").fill("120")
        assert page.evaluate(PIXELS, "axial-fused") != fused
        # a click on the fidelity chart goes to that slice
        box = page.locator("#chart").bounding_box()
        page.mouse.click(box["x"] + 0.25 * box["width"], box["y"] + box["height"] / 2)
        n = pet_fusion.fused.shape[-1]
        assert abs(page.evaluate("window.emmaViewer.state.k") - int(0.25 * n)) <= 1
        # a click on the axial view moves the coronal and sagittal planes
        box = page.locator("#axial-anatomical").bounding_box()
        page.mouse.click(box["x"] + 0.3 * box["width"], box["y"] + 0.6 * box["height"])
        state = page.evaluate("window.emmaViewer.state")
        rows, cols = page.evaluate(
            "[document.getElementById('axial-anatomical').height, document.getElementById('axial-anatomical').width]"
        )
        assert abs(state["j"] - int(0.6 * rows)) <= 1 and abs(state["i"] - int(0.3 * cols)) <= 1
        assert errors == []
    finally:
        browser.close()
        p.stop()


def test_2d_pair_viewer_and_the_cli(phantom_root, net, tmp_path):
    sync_api = _browser()
    a, b = phantom_root / "MRI_PET" / "MRI" / "2.png", phantom_root / "MRI_PET" / "PET" / "2.png"
    weights = tmp_path / "w.pt"
    torch.save(net.state_dict(), weights)
    out, page_path = tmp_path / "f.png", tmp_path / "f.html"
    assert main(["fuse", str(a), str(b), "-o", str(out), "--weights", str(weights), "--html", str(page_path)]) == 0
    assert out.is_file() and page_path.is_file()
    p, browser, page, errors = _open(sync_api, page_path)
    try:
        assert page.evaluate(PIXELS, "axial-fused")[0] > 0
        assert not page.locator("#coronal-fused").is_visible()  # one slice: no coronal or sagittal views
        assert errors == []
    finally:
        browser.close()
        p.stop()
    # `view` writes only the page
    only = tmp_path / "only" / "v.html"
    assert main(["view", str(a), str(b), "-o", str(only), "--weights", str(weights)]) == 0
    assert sorted(x.name for x in only.parent.iterdir()) == ["v.html"]
    assert main(["view", str(a), str(b), "-o", str(tmp_path / "v.png"), "--weights", str(weights)]) == 2
