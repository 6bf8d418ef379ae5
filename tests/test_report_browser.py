"""report.html in a real browser (Debian's headless chromium): every plot decodes and nothing overflows its column,
on a wide screen and a phone-sized one, for a text, an image and a CLIP run. The page carries no script; the test
renders a copy with a small check appended whose verdict chromium's --dump-dom hands back."""

import json
import re
import shutil
import subprocess

import pytest

from selfsup.report import write_report

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium")

# Runs after every image has loaded (the load event waits for them): per image, whether it decoded; per element,
# whether it reaches past the right edge of the body's content box or of its own figure; whether the page scrolls
# sideways.
CHECK = """<script>
addEventListener("load", () => {
  const body = document.body, style = getComputedStyle(body);
  const right = body.getBoundingClientRect().right - parseFloat(style.paddingRight) + 0.5;
  const name = el => el.tagName.toLowerCase() + (el.alt ? `[${el.alt}]` : el.className ? `.${el.className}` : "");
  const out = {
    images: [...document.images].map(i => ({alt: i.alt, decoded: i.complete && i.naturalWidth > 0,
                                            width: i.getBoundingClientRect().width})),
    overflow: [...body.querySelectorAll("*")].filter(el => el.getBoundingClientRect().right > right).map(name),
    figures: [...document.querySelectorAll("figure")].filter(f => f.scrollWidth > f.clientWidth
      || f.querySelector("img").getBoundingClientRect().right > f.getBoundingClientRect().right + 0.5).map(
      f => f.querySelector("img").alt),
    page_scrolls_sideways: document.documentElement.scrollWidth > document.documentElement.clientWidth,
  };
  const pre = document.createElement("pre");
  pre.id = "verdict";
  pre.textContent = JSON.stringify(out);
  body.append(pre);
});
</script>"""


def browser_verdict(report, tmp_path, width: int) -> dict:
    """What the check found in `report` rendered `width` CSS pixels wide."""
    page = tmp_path / f"checked-{width}.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},900", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=60).stdout
    found = re.search(r'<pre id="verdict">(.*?)</pre>', dom, re.S)
    assert found, f"chromium returned no verdict; its DOM began: {dom[:300]!r}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                      .replace("&amp;", "&"))


LONG = "/data/" + "a_very_long_folder_name_without_a_break" * 6 + "/train.jsonl"  # no place to break a line

# What record.py logs for each kind of run: (recipe, unit, the objective's own readings, collapse monitor on?)
KINDS = {"text": ("gpt-clm", "token", {}, False),
         "image": ("dino", "image", {"teacher_temp": 0.04, "teacher_entropy": 5.0}, True),
         "clip": ("clip", "pair", {"logit_scale": 14.3, "pair_acc": 0.5}, True)}


def make_run(root, kind: str):
    """A run directory as training leaves it: config.yaml, metrics.jsonl, summary.json, eval/, long values too."""
    recipe, unit, own, collapse = KINDS[kind]
    run = root / f"{kind}-run"
    (run / "eval").mkdir(parents=True)
    rows = []
    for step in range(1, 201):
        row = {"step": step, "loss": 5 / step ** 0.3, "lr": 1e-3 * min(1, step / 20), "mfu": 0.31 + step % 5 / 1000,
               f"{unit}s_per_s": 900.0 + step % 7, "grad_norm": 1 / step ** 0.5, "time": step * 0.1} | own
        if step % 25 == 0:
            row |= {"val_loss": 5.1 / step ** 0.3, "probe_knn_acc": step / 400, "probe_linear_acc": step / 300}
            row |= {"val_ppl": 2.7 ** row["val_loss"]} if kind == "text" else {}
            if collapse:
                row |= {"collapse_rankme": 40 - step / 10, "collapse_std": 0.06, "collapse_alignment": 0.3,
                        "collapse_uniformity": -2.5}
        rows.append(json.dumps(row))
    (run / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    (run / "config.yaml").write_text(f"recipe: {recipe}\ndata:\n  path: {LONG}\n")
    (run / "summary.json").write_text(json.dumps({
        "status": "finished", "recipe": recipe, "unit": unit, "steps": 200, f"{unit}s_per_s": 903.2, "mfu": 0.31,
        "data": {"path": LONG, "skipped": {"empty": 3}}, "classes": [f"class-{i}" for i in range(60)]}))
    (run / "eval" / "knn.json").write_text(json.dumps({"task": "knn", "pretrained": {"accuracy": 0.8},
                                                      "data": {"train": {"path": LONG}}}))
    return write_report(run)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_plot_decodes_and_nothing_overflows(kind, tmp_path):
    report = make_run(tmp_path, kind)
    unit = KINDS[kind][1]
    for width in (1280, 420):  # a desktop window (two plots a row) and a phone (one)
        verdict = browser_verdict(report, tmp_path, width)
        titles = [i["alt"] for i in verdict["images"]]
        assert f"Throughput ({unit}s/s)" in titles and "MFU" in titles and "Online probe accuracy" in titles
        assert all(i["decoded"] for i in verdict["images"]), verdict["images"]
        assert all(i["width"] > 100 for i in verdict["images"]), verdict["images"]  # shrunk to fit, not to nothing
        assert verdict["overflow"] == [] and verdict["figures"] == [], verdict
        assert not verdict["page_scrolls_sideways"]
