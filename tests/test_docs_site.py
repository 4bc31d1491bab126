"""The Annotated VAE (docs/build.py): the generator's rules, and the whole site built as a reader gets it.

The generator needs the docs extra (Markdown) and KaTeX under docs/node_modules
(``npm ci --prefix docs``); .ci/run installs both, and there a missing tool fails
these tests. Elsewhere a test that needs them is skipped, saying what to install.
"""
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("docs_build", ROOT / "docs" / "build.py")
build = importlib.util.module_from_spec(spec)
sys.modules["docs_build"] = build           # its dataclasses look their module up
spec.loader.exec_module(build)


def need(*tools):
    """Skip (fail in CI) unless the docs tools are installed: 'markdown', 'katex'."""
    missing = []
    if "markdown" in tools and importlib.util.find_spec("markdown") is None:
        missing.append("the docs extra (pip install -e '.[docs]')")
    if "katex" in tools and not ((build.KATEX / "katex.min.js").exists() and shutil.which("node")):
        missing.append("KaTeX (npm ci --prefix docs; needs Node.js)")
    if missing:
        message = "needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message + ": .ci/run installs them")
        pytest.skip(message)


def one_chapter(tmp_path, text):
    """A chapters folder holding one chapter, 00-x.md, with ``text``."""
    chapters = tmp_path / "chapters"
    chapters.mkdir(exist_ok=True)
    (chapters / "00-x.md").write_text(text)
    return chapters


def build_quietly(out, chapters):
    return build.build(out, log=lambda *a: None, chapters_dir=chapters)


def test_maths_survives_markdown_untouched():
    """Underscores, asterisks and backslashes of a docstring's LaTeX are Markdown's syntax too."""
    need("markdown")
    text = (r"The bound $\log p(x) \ge E_q[\log w_1 * w_2]$ and "
            r"$$\sum_{k=1}^{K} \pi_k \, \mathcal{N}(x; \mu_k, \sigma_k^2)$$")
    formulas = []
    hidden = build.protect_maths(text, formulas)
    assert [t for t, _ in formulas] == [r"\log p(x) \ge E_q[\log w_1 * w_2]",
                                        r"\sum_{k=1}^{K} \pi_k \, \mathcal{N}(x; \mu_k, \sigma_k^2)"]
    assert [d for _, d in formulas] == [False, True]
    page = build.restore_maths(build.markdown_html(hidden), [f"<m>{t}</m>" for t, _ in formulas])
    for tex, _ in formulas:
        assert f"<m>{tex}</m>" in page


def test_a_dollar_amount_is_not_maths():
    formulas = []
    assert build.protect_maths(r"costs \$5 and $ 3", formulas) == r"costs \$5 and $ 3" and formulas == []


def test_code_is_the_library_source_by_name():
    import inspect

    from scratchvae.kernels import numba as nbk
    from scratchvae.lessons import vi
    assert build.source_of("scratchvae.lessons.vi:exponential_prior_log_evidence") == \
        inspect.getsource(vi.exponential_prior_log_evidence).rstrip()
    method = build.source_of("scratchvae.lessons.vi:GaussianMixture1D.sample")
    assert method.startswith("def sample(self, rng, n):")         # dedented out of its class
    assert build.source_of("scratchvae.kernels.numba:_adam").startswith("@_jit()\ndef _adam(")   # a Numba kernel
    assert nbk._adam.py_func.__name__ == "_adam"


@pytest.mark.parametrize("target, says", [
    ("scratchvae.lessons.vi:no_such_function", "scratchvae.lessons.vi has no no_such_function"),
    ("scratchvae.lessons.vi:GaussianMixture1D.no_method", "has no GaussianMixture1D.no_method"),
    ("scratchvae.no_such_module:f", "module scratchvae.no_such_module does not import"),
    ("scratchvae.lessons.vi", "give MODULE:NAME"),
])
def test_a_renamed_function_fails_the_build_naming_it(tmp_path, target, says):
    chapters = one_chapter(tmp_path, f"# 0. X\n\n## A section\n\nSome prose.\n\n::: code {target}\n")
    with pytest.raises(build.BuildError) as e:
        build_quietly(tmp_path / "site", chapters)
    assert "00-x.md" in str(e.value) and "A section" in str(e.value) and says in str(e.value)


def test_a_failing_script_fails_the_build(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("raise SystemExit('the example broke')\n")
    chapters = one_chapter(tmp_path, f"# 0. X\n\n::: run {script}\n")
    with pytest.raises(build.BuildError, match="failed .exit 1.:\nthe example broke"):
        build_quietly(tmp_path / "site", chapters)


def test_a_formula_katex_rejects_fails_the_build(tmp_path):
    need("markdown", "katex")
    chapters = one_chapter(tmp_path, "# 0. X\n\nA broken formula: $\\frac{1}{$.\n")
    with pytest.raises(build.BuildError, match=r"00-x.md: KaTeX cannot typeset \$\\frac\{1\}\{\$"):
        build_quietly(tmp_path / "site", chapters)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The real site, built once for the tests below (its examples train small models: ~1-3 min)."""
    need("markdown", "katex")
    out = tmp_path_factory.mktemp("annotated") / "site"
    return out, build.build(out, log=lambda *a: None)


def test_the_site_builds_with_every_formula_picture_and_link_in_place(site):
    """The real chapters, built as a reader gets them: every page typeset, every picture
    there and not blank, every link and stylesheet found, no reference to the network."""
    import matplotlib.image
    site, pages = site
    chapters = sorted((ROOT / "docs" / "chapters").glob("*.md"))
    assert [p.name for p in pages] == ["index.html"] + [c.stem + ".html" for c in chapters]
    for page in pages:
        text = page.read_text()
        assert "katex-error" not in text and "MATHSPLACEHOLDER" not in text, page.name
        assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text, page.name
        for ref in re.findall(r'(?:href|src)="([^"#]+)', text):
            assert (site / ref).exists(), f"{page.name}: {ref} is missing"
        for ref in re.findall(r'<img src="([^"]+)"', text):
            pixels = matplotlib.image.imread(site / ref)
            assert pixels.std() > 0.01, f"{page.name}: {ref} is blank"
    chapter = (site / "02-an-exact-posterior.html").read_text()
    assert chapter.count('class="katex-display"') >= 3 and "def exponential_prior_log_evidence" in chapter
    assert "log p(x) = 1/2 - x + log Phi(x - 1) = -1.3689464153" in chapter      # the example's printout
    index = (site / "index.html").read_text()
    assert "A learner's map" in index and "<table>" in index          # the map by equation is the index's half
    kernels = (site / "07-the-vae-kernel-by-kernel.html").read_text()
    assert re.search(r'<h2 id="s1">A layer: <span class="katex">', kernels)          # maths in a heading
    assert "the whole VAE, every weight  ok" in kernels
    katex = site / "assets" / "katex"
    assert (katex / "katex.min.css").exists() and any((katex / "fonts").iterdir())


PROBE = """<!DOCTYPE html><html><body><pre id="result">pending</pre><script>
const pages = %s, results = {};
let left = pages.length;
for (const page of pages) {
  const frame = document.createElement("iframe");
  frame.style.width = "1400px"; frame.style.height = "900px";
  frame.onload = () => {
    const d = frame.contentDocument, images = [...d.images];
    results[page] = {katex: d.querySelectorAll(".katex").length, errors: d.querySelectorAll(".katex-error").length,
                     images: images.length, sheets: d.styleSheets.length, font: d.fonts.check("16px KaTeX_Main"),
                     broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"))};
    if (--left === 0) document.getElementById("result").textContent = JSON.stringify(results);
  };
  frame.src = page;
  document.body.appendChild(frame);
}
</script></body></html>
"""


def chromium():
    """Debian's Chromium (.ci/run installs it when missing), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_every_page_opens_in_a_headless_browser(site, tmp_path):
    """Each page as Chromium shows it from file://: maths set in KaTeX's fonts with no error
    node, both stylesheets applied, every picture loaded; a screenshot of chapter 2 is kept
    (in $SCRATCHVAE_ARTEFACTS when set, as .ci/run sets it) and must not be blank."""
    import json
    import subprocess

    import matplotlib.image
    browser = chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("needs Chromium: .ci/run installs it (apt-get install chromium)")
        pytest.skip("needs Chromium (apt-get install chromium)")
    site, pages = site
    pages = [p.name for p in pages]
    (site / "probe.html").write_text(PROBE % json.dumps(pages))
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--virtual-time-budget=20000", "--dump-dom", (site / "probe.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="result">([^<]*)</pre>', dom)
    assert found and found.group(1) != "pending", dom[-2000:]
    results = json.loads(found.group(1))
    assert sorted(results) == sorted(pages)
    with_maths = {c.stem + ".html" for c in (ROOT / "docs" / "chapters").glob("*.md") if "$" in c.read_text()}
    assert len(with_maths) >= 10
    for page, r in results.items():
        assert r["errors"] == 0 and r["broken"] == [] and r["sheets"] == 2, (page, r)
        if page in with_maths:
            assert r["katex"] > 0 and r["font"], (page, r)
    assert results["02-an-exact-posterior.html"]["images"] >= 1
    keep = Path(os.environ.get("SCRATCHVAE_ARTEFACTS", tmp_path))
    keep.mkdir(parents=True, exist_ok=True)
    shot = keep / "annotated-vae-chapter-2.png"
    subprocess.run(flags + ["--window-size=1400,1700", f"--screenshot={shot}",
                            (site / "02-an-exact-posterior.html").as_uri()], capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1700, 1400) and pixels.std() > 0.05


def test_the_build_never_replaces_a_users_files(tmp_path):
    chapters = one_chapter(tmp_path, "# 0. X\n\nProse only.\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("my own page")
    with pytest.raises(build.BuildError, match="already holds files that are not a build of this site"):
        build_quietly(mine, chapters)
    assert (mine / "index.html").read_text() == "my own page"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(build.BuildError, match="is a file, not a folder"):
        build_quietly(tmp_path / "a-file", chapters)


def test_a_rebuild_replaces_an_earlier_builds_pages(tmp_path):
    need("markdown", "katex")
    chapters = one_chapter(tmp_path, "# 0. X\n\nFirst words.\n")
    page = chapters / "00-x.md"
    site = tmp_path / "site"
    build_quietly(site, chapters)
    page.write_text("# 0. X\n\nSecond words.\n")
    build_quietly(site, chapters)
    text = (site / "00-x.html").read_text()
    assert "Second words." in text and "First words." not in text
