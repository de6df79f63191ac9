"""The HTML viewer: built in Python, checked in a real headless browser (Chromium from the OS
packages, driven by Playwright); the browser cases skip when either is missing."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_emma.cli import main
from monai_emma.fidelity import fidelity_report
from monai_emma.fusion import fuse_volumes
from monai_emma.networks import UFuser
from monai_emma.viewer import describe_page, viewer_html, write_viewer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VIEWS = [
    f"{plane}-{layer}"
    for plane in ("axial", "coronal", "sagittal")
    for layer in ("anatomical", "other", "fused", "overlay")
]


class MeanFuser:
    """A stand-in fuser (the mean of the two inputs): fusions in about a second, for page tests."""

    def __call__(self, x):
        return x.mean(1, keepdim=True)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UFuser().eval()


@pytest.fixture(scope="module")
def pet_fusion(phantom_volume_files, net):
    nifti = phantom_volume_files["nifti"]
    return fuse_volumes(nifti["mri"], nifti["pet"], model=net, precision="fp32")


@pytest.fixture(scope="module")
def pet_report(pet_fusion):
    return fidelity_report(pet_fusion)


@pytest.fixture(scope="module")
def ct_pet_fusion(phantom_volume_files):
    """PET/CT from the phantom DICOM series: a CT base (HU) and a body-weight SUV study."""
    dicom = phantom_volume_files["dicom"]
    return fuse_volumes(dicom["ct"], dicom["pet"], model=MeanFuser())


def _data(page: str) -> dict:
    return json.loads(re.search(r'<script id="emma-data" type="application/json">(.*?)</script>', page, re.S).group(1))


def test_page_is_self_contained(pet_fusion, pet_report, tmp_path):
    page = viewer_html(pet_fusion, pet_report)
    assert "http://" not in page and "https://" not in page and "<script src" not in page  # opens offline
    data = _data(page)
    assert data["shape"][0] == pet_fusion.fused.shape[-1]  # axial slices first
    assert len(data["report"]["slices"]) == data["shape"][0]
    assert data["labels"]["other"] == "PET" and set(data["volumes"]) == {"anatomical", "other", "fused"}
    # display orientation PLS: rows anterior -> posterior, columns right -> left, slices inferior -> superior
    assert data["orient"] == {"rows": ["A", "P"], "cols": ["R", "L"], "slices": ["I", "S"]}
    path = write_viewer(pet_fusion, tmp_path / "v.html", pet_report)
    assert re.fullmatch(r"v\.html \(\d+(\.\d)? [kM]B\)", describe_page(path))
    with pytest.raises(FileExistsError):
        write_viewer(pet_fusion, path, pet_report)


def test_scales_in_units(ct_pet_fusion, pet_fusion):
    """Bytes map to HU for a CT base, SUV for a converted PET, the file's values for MRI."""
    from monai_emma.transforms.intensity import DEFAULT_INTENSITY, intensity_bounds

    scales = _data(viewer_html(ct_pet_fusion))["scales"]
    assert scales["anatomical"] == {"lo": -100.0, "hi": 300.0, "units": "HU"}  # the head window
    assert scales["other"]["units"] == "SUVbw" and scales["other"]["lo"] == 0.0
    assert scales["other"]["hi"] == pytest.approx(ct_pet_fusion.other_scale[1], rel=1e-6)
    # a result that does not carry the anatomical scale: fitted from the input and its scaled image
    if hasattr(ct_pet_fusion, "anatomical_scale"):
        bare = dataclasses.replace(ct_pet_fusion, anatomical_scale=(0.0, 1.0))
        fitted = _data(viewer_html(bare))["scales"]["anatomical"]
        assert fitted["lo"] == pytest.approx(-100.0, abs=0.05) and fitted["hi"] == pytest.approx(300.0, abs=0.05)
    mri = _data(viewer_html(pet_fusion))["scales"]
    lo, hi = intensity_bounds(pet_fusion.anatomical.array, DEFAULT_INTENSITY["mri"])
    assert mri["anatomical"]["units"] == "" and mri["anatomical"]["lo"] == pytest.approx(lo, rel=1e-3, abs=1e-3)
    assert mri["anatomical"]["hi"] == pytest.approx(hi, rel=1e-3)
    assert mri["other"] == {"lo": 0.0, "hi": pytest.approx(pet_fusion.other_scale[1]), "units": ""}  # NIfTI PET


HOSTILE_TITLE = "</script><script>window.pwned=1</script><!--<script>__DATA__ & __TITLE__"


def test_page_is_filled_once(pet_fusion):
    """Slot words, markup, quotes and U+2028 in names and titles stay text; the data once, escaped."""
    a = dataclasses.replace(pet_fusion.anatomical, path=Path("__DATA__mri<!--<script>'\".nii.gz"))
    b = dataclasses.replace(pet_fusion.other, path=Path("pet<img src=x onerror=alert(1)>\u2028__TITLE__.nii.gz"))
    hostile = dataclasses.replace(pet_fusion, anatomical=a, other=b, notes=["<b>note</b> \u2029 &amp;"])
    plain = viewer_html(pet_fusion, title="plain")
    for page in (viewer_html(hostile), viewer_html(hostile, title=HOSTILE_TITLE)):
        block = re.search(r'<script id="emma-data" type="application/json">(.*?)</script>', page, re.S).group(1)
        assert not re.search("[<>&\u2028\u2029]", block)  # nothing can close, comment out or break the script
        data = json.loads(block)
        assert data["notes"][0] == "<b>note</b> \u2029 &amp;" and data["notes"][-1].endswith(b.path.name)
        assert page.count(data["volumes"]["fused"]) == 1 and page.count("emma-data") == 2  # the data once
        assert len(page) < len(plain) + 2_000  # not doubled
        assert "<img" not in page and "<!--<script>" not in page.replace(block, "")
    title = re.search(r'<h1 id="title">(.*?)</h1>', viewer_html(hostile, title=HOSTILE_TITLE), re.S).group(1)
    assert (
        title
        == "&lt;/script&gt;&lt;script&gt;window.pwned=1&lt;/script&gt;&lt;!--&lt;script&gt;__DATA__ &amp; __TITLE__"
    )


def test_voxel_mm_averages_blocks(pet_fusion, ct_pet_fusion):
    from monai_emma.viewer import _block_mean

    v = np.arange(60, dtype=np.float32).reshape(5, 4, 3)
    out = _block_mean(v, (2, 2, 1))
    assert out.shape == (3, 2, 3)
    assert out[0, 0, 0] == pytest.approx(v[:2, :2, 0].mean()) and out[2, 1, 2] == pytest.approx(v[4, 2:, 2].mean())
    full, half = _data(viewer_html(pet_fusion)), _data(viewer_html(pet_fusion, voxel_mm=2.0))
    assert half["factors"] == [2, 2, 2] and half["spacing"] == [2 * s for s in full["spacing"]]
    assert half["shape"] == [-(-n // 2) for n in full["shape"]]
    ct = _data(viewer_html(ct_pet_fusion, voxel_mm=2.0))  # CT voxels 0.9 x 0.9 x 2 mm: in-plane pairs only
    assert ct["factors"] == [1, 2, 2] and ct["spacing"] == pytest.approx([2.0, 1.8, 1.8])
    assert _data(viewer_html(ct_pet_fusion, voxel_mm=0.5))["factors"] == [1, 1, 1]  # never finer than the data
    with pytest.raises(ValueError, match="voxel_mm"):
        viewer_html(pet_fusion, voxel_mm=0.0)


# --- in a headless browser -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module's browser cases."""
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    p = sync_api.sync_playwright().start()
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    b = p.chromium.launch(executable_path=CHROMIUM, args=[*args, "--disable-sync", "--no-first-run"])
    yield b
    b.close()
    p.stop()


@dataclasses.dataclass
class Log:
    errors: list
    dialogs: list
    requests: list


def _open(browser, path):
    """A page with ``path`` loaded in ``browser``, and what it logged (console errors, dialogs, requests)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    log = Log([], [], [])
    page.on("console", lambda m: log.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: log.errors.append(str(e)))
    page.on("dialog", lambda d: (log.dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: log.requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_function("window.emmaViewer && window.emmaViewer.ready", timeout=60_000)
    return page, log


PIXELS = """(id) => { const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = 0, h = 0;
  for (let i = 0; i < d.length; i += 4) { s += d[i] + d[i + 1] + d[i + 2]; h = (h * 31 + d[i]) >>> 0; }
  return [s, h]; }"""

# the centroid (row, column as fractions of the view) of a view's bright pixels
BRIGHT = """(id) => { const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0, r = 0, k = 0;
  for (let p = 0; p < d.length / 4; p++) {
    if (d[4 * p] > 128) { n++; r += Math.floor(p / c.width); k += p % c.width; }
  }
  return [(r / n + 0.5) / c.height, (k / n + 0.5) / c.width]; }"""

LETTERS = """(id) => [...document.getElementById(id).parentElement.querySelectorAll('.ori')]
  .map((s) => [s.classList[1], s.textContent])"""


def test_viewer_in_a_headless_browser(pet_fusion, pet_report, tmp_path, browser):
    path = write_viewer(pet_fusion, tmp_path / "viewer.html", pet_report)
    page, log = _open(browser, path)
    for view in VIEWS:  # every view draws an image
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
    # the window (in the MRI's own values) changes the grey images
    page.locator("#whi").fill(str(page.evaluate("window.emmaViewer.units('anatomical', 120)")))
    assert page.evaluate("window.emmaViewer.state.whi") == 120
    assert page.evaluate(PIXELS, "axial-fused") != fused
    # the chart: y ticks of the gain, x ticks of the slices, each modality's flag threshold, drawn where it says
    chart = page.evaluate("window.emmaViewer.chart()")
    n = pet_fusion.fused.shape[-1]
    assert len(chart["yTicks"]) >= 2 and any(t["value"] == 0 for t in chart["yTicks"])
    assert chart["xTicks"][0]["value"] == 0 and len(chart["xTicks"]) >= 3 and chart["xTicks"][-1]["value"] < n
    assert {m: t["value"] for m, t in chart["thresholds"].items()} == pet_report.as_dict()["summary"]["thresholds"]
    for mark in chart["thresholds"].values():  # a dashed line at the threshold's height, not the background
        pixel = page.evaluate(
            "([x, y]) => [...document.getElementById('chart').getContext('2d').getImageData(x, y, 1, 1).data]",
            [chart["plot"]["x0"] + 2, int(mark["y"])],
        )
        assert sum(pixel[:3]) > 3 * 0x30, (mark, pixel)
    assert "flagged below 0.2" in page.locator("#legend").text_content()
    # a click on the fidelity chart goes to that slice
    box = page.locator("#chart").bounding_box()
    target = n // 4
    page.mouse.click(box["x"] + page.evaluate(f"window.emmaViewer.chartX({target})") * box["width"], box["y"] + 40)
    assert page.evaluate("window.emmaViewer.state.k") == target
    # a click on the axial view moves the coronal and sagittal planes, and the read-out follows
    text = page.locator("#readout").text_content()
    box = page.locator("#axial-anatomical").bounding_box()
    page.mouse.click(box["x"] + 0.3 * box["width"], box["y"] + 0.6 * box["height"])
    state = page.evaluate("window.emmaViewer.state")
    rows, cols = page.evaluate(
        "[document.getElementById('axial-anatomical').height, document.getElementById('axial-anatomical').width]"
    )
    assert abs(state["j"] - int(0.6 * rows)) <= 1 and abs(state["i"] - int(0.3 * cols)) <= 1
    after = page.locator("#readout").text_content()
    assert after != text and f"row {state['j']}, column {state['i']}" in after
    assert re.search(r"MRI -?[\d.]+ .*PET [\d.]+ .*EMMA fused [\d.]+", after), after
    assert log.errors == []
    page.close()


def test_orientation_letters_match_the_anatomy(pet_fusion, tmp_path, browser):
    """A second modality bright only right, anterior and superior of the centre (RAS+ world coordinates)
    is drawn on the side of the letters R, A and S in every view."""
    from monai_emma.transforms.geometry import to_display

    affine, shape = pet_fusion.anatomical.affine, pet_fusion.fused.shape
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)
    centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]
    marker = np.all(world > centre, axis=-1).astype(np.float32)  # RAS+: +x right, +y anterior, +z superior
    result = dataclasses.replace(pet_fusion, other_scaled=marker)
    # the crosshair on a voxel inside the marked octant, in display (row, column, slice) indices
    voxel = np.round(np.linalg.solve(affine[:3, :3], centre + 4.0 - affine[:3, 3])).astype(int)
    inside = np.ravel_multi_index(tuple(voxel), shape)
    display = to_display(np.arange(marker.size, dtype=np.float64).reshape(shape), affine)
    row, col, sl = np.argwhere(display == inside)[0]
    page, log = _open(browser, write_viewer(result, tmp_path / "marker.html"))
    state = {"k": int(sl), "j": int(row), "i": int(col), "cross": False}
    page.evaluate("(s) => { Object.assign(window.emmaViewer.state, s); window.emmaViewer.renderAll(); }", state)
    expected = {"axial": ("A", "R"), "coronal": ("S", "R"), "sagittal": ("S", "A")}  # (vertical, horizontal)
    for plane, (vertical, horizontal) in expected.items():
        letters = dict(page.evaluate(LETTERS, f"{plane}-other"))
        assert sorted(letters) == ["bottom", "left", "right", "top"]
        r, c = page.evaluate(BRIGHT, f"{plane}-other")
        assert letters["top" if r < 0.5 else "bottom"] == vertical, (plane, r, letters)
        assert letters["left" if c < 0.5 else "right"] == horizontal, (plane, c, letters)
        assert abs(r - 0.5) > 0.1 and abs(c - 0.5) > 0.1  # clearly on one side
    assert log.errors == []
    page.close()


def test_units_and_voxel_mm_in_a_headless_browser(ct_pet_fusion, pet_fusion, pet_report, tmp_path, browser):
    from monai_emma.transforms.geometry import to_display

    page, log = _open(browser, write_viewer(ct_pet_fusion, tmp_path / "petct.html"))
    out = {i: page.locator(f"#{i}-out").text_content() for i in ("wlo", "whi", "thr")}
    assert out["wlo"] == "-100 HU" and out["whi"] == "300 HU"  # the CT window, in HU
    thr, units = out["thr"].split()
    assert units == "SUVbw" and abs(float(thr) - 2.5) <= ct_pet_fusion.other_scale[1] / 255  # the SUV 2.5 default
    page.locator("#wlo").fill("0")  # 0 HU
    assert page.evaluate("window.emmaViewer.state.wlo") == round(100 / 400 * 255)
    # the read-out: the CT value at the crosshair in HU (the head window's range), PET in SUV
    state = page.evaluate("window.emmaViewer.state")
    hu = to_display(ct_pet_fusion.anatomical.array, ct_pet_fusion.anatomical.affine)[state["j"], state["i"], state["k"]]
    match = re.search(r"CT [≤≥]? ?(-?\d+) HU · PET [≤≥]? ?([\d.]+) SUVbw", page.locator("#readout").text_content())
    assert match and abs(float(match.group(1)) - np.clip(hu, -100, 300)) <= 400 / 255
    assert log.errors == []
    page.close()
    # voxel_mm: a smaller page whose views still draw, with the same proportions, and the chart on the report's slices
    full_path = write_viewer(pet_fusion, tmp_path / "full.html", pet_report)
    half_path = write_viewer(pet_fusion, tmp_path / "half.html", pet_report, voxel_mm=2.0)
    assert half_path.stat().st_size < 0.4 * full_path.stat().st_size
    sizes, canvases = {}, {}
    for name, path in (("full", full_path), ("half", half_path)):
        page, log = _open(browser, path)
        for view in VIEWS:
            assert page.evaluate(PIXELS, view)[0] > 0, (name, view)
        sizes[name] = [page.locator(f"#{view}").bounding_box() for view in VIEWS]
        canvases[name] = page.evaluate("[...document.querySelectorAll('canvas.view')].map((c) => [c.width, c.height])")
        if name == "half":  # a click on the chart's report slice goes to the shown slice that holds it
            box = page.locator("#chart").bounding_box()
            target = pet_fusion.fused.shape[-1] // 3
            x = page.evaluate(f"window.emmaViewer.chartX({target})")
            page.mouse.click(box["x"] + x * box["width"], box["y"] + 40)
            assert page.evaluate("window.emmaViewer.state.k") == target // 2
        assert log.errors == []
        page.close()
    assert canvases["half"] == [[-(-n // 2) for n in wh] for wh in canvases["full"]]  # half the voxels a side
    # the same size on screen, the spacing doubled with the blocks (a partial last block counts as a whole: 1 voxel)
    for a, b in zip(sizes["full"], sizes["half"]):
        for side in ("width", "height"):
            assert abs(a[side] - b[side]) <= 2 + a[side] / min(pet_fusion.fused.shape), (a, b)


def _hostile_dicom(src: Path, dst: Path, **fields) -> Path:
    """A copy of a DICOM series with some header text fields replaced."""
    import pydicom
    from pydicom import config

    dst.mkdir()
    with config.disable_value_validation():  # the values break their VR's rules on purpose
        for f in sorted(src.glob("*.dcm")):
            ds = pydicom.dcmread(f)
            for key, value in fields.items():
                setattr(ds, key, value)
            ds.save_as(dst / f.name)
    return dst


def test_hostile_names_in_a_headless_browser(phantom_volume_files, tmp_path, browser):
    """File and folder names, DICOM text, titles and report modality names that would be markup, slots or
    script in a careless page are shown as text: no script runs, every view draws, the data appear once."""
    nifti, dicom = phantom_volume_files["nifti"], phantom_volume_files["dicom"]
    flag = "window.pwned=1;document.title='PWNED';alert(1)"
    # the version before this page put the data into the <h1> for __DATA__ and so ran the <img>'s script
    a = tmp_path / "__DATA__mri'\"__TITLE__.nii.gz"
    b = tmp_path / f"pet<img src=x onerror={flag}>\u2028<x.nii.gz"
    shutil.copy(nifti["mri"], a)
    shutil.copy(nifti["pet"], b)
    from_names = fuse_volumes(a, b, model=MeanFuser(), modality="pet")
    n = from_names.fused.shape[-1]
    mod = "mri<img src=x onerror=window.pwned=1>"
    report = {  # modality names are shown in the chart's legend
        "modalities": [mod, "pet"],
        "summary": {"flagged": [1], "thresholds": {mod: 0.2, "pet": 0.1}},
        "slices": [
            {
                "index": k,
                "scores": {mod: {"gain": 0.3}, "pet": {"gain": 0.05 if k == 1 else 0.4}},
                "flag": ["pet"] * (k == 1),
            }
            for k in range(n)
        ],
    }
    payload = "<img src=x onerror=alert(1)>"
    ct = _hostile_dicom(
        dicom["ct"], tmp_path / "ct<!--<script>__DATA__", SeriesDescription=payload, PatientName=payload
    )
    pet = _hostile_dicom(
        dicom["pet"], tmp_path / "pet<img src=x onerror=window.pwned=1>\u2028", Units=payload, SeriesDescription=payload
    )
    from_dicom = fuse_volumes(ct, pet, model=MeanFuser())
    assert any(payload.upper() in note for note in from_dicom.notes)  # DICOM text reaches the page (a SUV note)
    pages = [
        (from_names, report, None, f"EMMA fusion: {a.name} + {b.name}"),
        (from_names, None, HOSTILE_TITLE, HOSTILE_TITLE),
        (from_dicom, None, None, f"EMMA fusion: {ct.name} + {pet.name}"),
    ]
    for number, (result, rep, title, shown) in enumerate(pages):
        path = write_viewer(result, tmp_path / f"hostile{number}.html", rep, title=title)
        text = path.read_text(encoding="utf-8")
        assert text.count(_data(text)["volumes"]["fused"]) == 1
        assert len(text) < len(viewer_html(result, rep, title="plain")) + 2_000  # nothing pasted twice
        page, log = _open(browser, path)
        assert page.evaluate("window.pwned") is None and log.dialogs == []  # no script ran
        assert page.title() == re.sub(r"[ \t\n\r\f]+", " ", shown).strip(" ")  # not 'PWNED'
        assert page.locator("h1").text_content() == shown  # shown as the text it is
        assert page.evaluate("document.querySelectorAll('img, iframe, object, embed').length") == 0
        assert page.evaluate("document.scripts.length") == 2  # the data and the viewer
        assert [u for u in log.requests if u != page.url] == []  # nothing fetched (no injected <img src=x>)
        assert page.evaluate("document.querySelectorAll('canvas').length") == 13  # 12 views and the chart
        for view in VIEWS:
            assert page.evaluate(PIXELS, view)[0] > 0, (number, view)
        notes = page.locator("#notes").text_content()
        assert result.anatomical.path.name in notes and result.other.path.name in notes
        if rep is not None:
            assert mod in page.locator("#legend").text_content() and page.locator("#chart").is_visible()
        if result is from_dicom:
            assert payload.upper() in notes
        assert log.errors == [], (number, log.errors)
        page.close()


def test_2d_pair_viewer_and_the_cli(phantom_root, net, tmp_path, browser):
    a, b = phantom_root / "MRI_PET" / "MRI" / "2.png", phantom_root / "MRI_PET" / "PET" / "2.png"
    weights = tmp_path / "w.pt"
    torch.save(net.state_dict(), weights)
    out, page_path = tmp_path / "f.png", tmp_path / "f.html"
    assert main(["fuse", str(a), str(b), "-o", str(out), "--weights", str(weights), "--html", str(page_path)]) == 0
    assert out.is_file() and page_path.is_file()
    page, log = _open(browser, page_path)
    assert page.evaluate(PIXELS, "axial-fused")[0] > 0
    assert not page.locator("#coronal-fused").is_visible()  # one slice: no coronal or sagittal views
    assert page.locator(".ori").count() == 0  # a 2D image has no known orientation: no letters
    assert page.locator("#wlo-out").text_content() == "0"  # 8-bit values
    assert log.errors == []
    page.close()
    # `view` writes only the page
    only = tmp_path / "only" / "v.html"
    assert main(["view", str(a), str(b), "-o", str(only), "--weights", str(weights)]) == 0
    assert sorted(x.name for x in only.parent.iterdir()) == ["v.html"]
    assert main(["view", str(a), str(b), "-o", str(tmp_path / "v.png"), "--weights", str(weights)]) == 2
