"""Build The Annotated VAE: a static site, one page per chapter, the prose and
the maths on the left, the library's own code and what it prints on the right.

    pip install -e '.[docs]' && npm ci --prefix docs && python docs/build.py -o site/

then open ``site/index.html`` (it works from ``file://``, with no network).

A chapter is a Markdown file ``docs/chapters/NN-slug.md``: a ``# title``, then
sections that start at ``## `` headings. In a section, two kinds of line are
directives rather than prose, and what they bring stands beside the prose:

``::: code MODULE:NAME``
    the source of a function, class or method of the library (``NAME`` may be
    dotted, ``Class.method``), taken at build time: the page cannot drift from
    the code, and a name that no longer exists fails the build;
``::: run SCRIPT ARGS``
    a Python script of the project run at build time (``{figure}`` in ARGS
    becomes a PNG path in the site): its printout is shown, and the picture
    it writes is embedded.

Maths between ``$...$`` (inline) and ``$$...$$`` (display) is kept away from
Markdown and set by KaTeX at build time (``docs/katex_render.js``, with the
KaTeX that ``docs/package.json`` pins), so a page needs no script; a formula
KaTeX cannot parse fails the build, naming it.
"""
from __future__ import annotations

import argparse
import html
import importlib
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

from scratchvae.atomic import write_bytes

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHAPTERS = HERE / "chapters"
#: the file that marks a folder as a build of the site, so that a rebuild may replace its pages
MARKER = ".annotated-vae"
KATEX = HERE / "node_modules" / "katex" / "dist"
DIRECTIVE = re.compile(r"^::: (code|run) (.+)$")
# display maths first, so that its dollars are not read as two inline formulas
MATHS = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$(?!\s)(.+?)(?<![\s\\])\$", re.S)


class BuildError(RuntimeError):
    """What stops a build: a missing name, a failing script, a formula KaTeX rejects."""


@dataclass
class Section:
    heading: str                      # "" for a chapter's opening section
    prose: List[str] = field(default_factory=list)
    directives: List[tuple] = field(default_factory=list)      # (kind, argument)


@dataclass
class Chapter:
    path: Path
    title: str
    sections: List[Section]

    @property
    def slug(self) -> str:
        return self.path.stem


def read_chapter(path: Path) -> Chapter:
    """A chapter file cut into its title and sections."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("# "):
        raise BuildError(f"{path.name}: the first line must be the chapter's '# title'")
    sections = [Section("")]
    for line in lines[1:]:
        if line.startswith("## "):
            sections.append(Section(line[3:].strip()))
            continue
        m = DIRECTIVE.match(line)
        if m:
            sections[-1].directives.append((m.group(1), m.group(2).strip()))
        else:
            sections[-1].prose.append(line)
    return Chapter(path, lines[0][2:].strip(), sections)


# --------------------------------------------------------------------------
# maths: out of Markdown's way, then typeset by KaTeX
# --------------------------------------------------------------------------

def protect_maths(text: str, formulas: list) -> str:
    """``text`` with each formula replaced by a placeholder Markdown leaves alone; the
    formulas are appended to ``formulas`` as ``(tex, display)``."""
    def hide(m):
        display = m.group(1) is not None
        formulas.append(((m.group(1) if display else m.group(2)).strip(), display))
        return f"MATHSPLACEHOLDER{len(formulas) - 1}X"
    return MATHS.sub(hide, text)


def restore_maths(page: str, rendered: list) -> str:
    """Put each formula's typeset HTML where its placeholder stands."""
    return re.sub(r"MATHSPLACEHOLDER(\d+)X", lambda m: rendered[int(m.group(1))], page)


def typeset(formulas: list, where: list) -> list:
    """KaTeX's HTML for each ``(tex, display)``, in one run of node; ``where`` names each
    formula's chapter for the error of one that does not parse."""
    if not formulas:
        return []
    node = shutil.which("node")
    if node is None:
        raise BuildError("Node.js is not installed (the maths is typeset by KaTeX at build time): install it, "
                         "e.g. 'apt install nodejs npm'")
    request = json.dumps([{"tex": t, "display": d} for t, d in formulas])
    out = subprocess.run([node, str(HERE / "katex_render.js")], input=request, capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise BuildError(f"KaTeX failed: {out.stderr.strip()}")
    results = json.loads(out.stdout)
    for (tex, _), result, chapter in zip(formulas, results, where):
        if "error" in result:
            raise BuildError(f"{chapter}: KaTeX cannot typeset ${tex}$: {result['error']}")
    return [r["html"] for r in results]


# --------------------------------------------------------------------------
# directives
# --------------------------------------------------------------------------

def source_of(target: str) -> str:
    """The source of ``module:qualname`` (a function, class or method of the project)."""
    module_name, sep, qualname = target.partition(":")
    if not sep or not qualname:
        raise BuildError(f"'::: code {target}': give MODULE:NAME, e.g. scratchvae.model.latent:reparameterize")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise BuildError(f"'::: code {target}': module {module_name} does not import ({e})") from None
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise BuildError(f"'::: code {target}': {module_name} has no {qualname} (renamed or removed? "
                             "update the chapter)")
        obj = getattr(obj, part)
    obj = inspect.unwrap(getattr(obj, "py_func", obj))        # a Numba kernel shows its Python source
    return textwrap.dedent(inspect.getsource(obj)).rstrip()


def run_script(argument: str, figure: Path) -> str:
    """Run ``SCRIPT ARGS`` from the project root; its printout (stdout)."""
    args = shlex.split(argument.replace("{figure}", str(figure)))
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    try:
        out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env,
                             timeout=600)
    except subprocess.TimeoutExpired:
        raise BuildError(f"'::: run {argument}' ran longer than 600 s") from None
    if out.returncode != 0:
        raise BuildError(f"'::: run {argument}' failed (exit {out.returncode}):\n{out.stderr.strip()[-2000:]}")
    if "{figure}" in argument and not figure.exists():
        raise BuildError(f"'::: run {argument}' wrote no picture at {figure}")
    return out.stdout.rstrip()


# --------------------------------------------------------------------------
# pages
# --------------------------------------------------------------------------

def markdown_html(text: str) -> str:
    import markdown          # the docs extra
    return markdown.markdown(text, extensions=["fenced_code", "tables"])


def section_html(chapter: Chapter, index: int, section: Section, figures: Path, formulas: list) -> str:
    prose = protect_maths("\n".join(section.prose), formulas)
    heading = (f"<h2 id=\"s{index}\">{html.escape(protect_maths(section.heading, formulas))}</h2>\n"
               if section.heading else "")
    right = []
    for n, (kind, argument) in enumerate(section.directives):
        try:
            if kind == "code":
                right.append(f"<div class=\"label\">{html.escape(argument)}</div>"
                             f"<pre><code class=\"python\">{html.escape(source_of(argument))}</code></pre>")
            else:
                figure = figures / f"{chapter.slug}-{index}-{n}.png"
                printout = run_script(argument, figure).replace(str(figure), f"figures/{figure.name}")
                right.append(f"<div class=\"label\">$ python {html.escape(argument.replace('{figure}', figure.name))}"
                             f"</div><pre class=\"output\">{html.escape(printout)}</pre>")
                if figure.exists():
                    right.append(f"<img src=\"figures/{figure.name}\" alt=\"the picture "
                                 f"{html.escape(argument.split()[0])} draws\">")
        except BuildError as e:
            raise BuildError(f"{chapter.path.name}, section '{section.heading or chapter.title}': {e}") from None
    return (f"<section>\n<div class=\"prose\">{heading}{markdown_html(prose)}</div>\n"
            f"<div class=\"code\">{''.join(right)}</div>\n</section>\n")


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - The Annotated VAE</title>
<link rel="stylesheet" href="assets/katex/katex.min.css">
<link rel="stylesheet" href="assets/site.css">
</head><body>
<nav>{nav}</nav>
<header><h1>{title}</h1></header>
{body}
<nav>{nav}</nav>
</body></html>
"""


def nav_html(chapters: List[Chapter], i: int) -> str:
    parts = ['<a href="index.html">contents</a>']
    if i > 0:
        parts.append(f'<a href="{chapters[i - 1].slug}.html">&larr; {html.escape(chapters[i - 1].title)}</a>')
    if i + 1 < len(chapters):
        parts.append(f'<a href="{chapters[i + 1].slug}.html">{html.escape(chapters[i + 1].title)} &rarr;</a>')
    return " &middot; ".join(parts)


def claim(out: Path) -> None:
    """Make ``out`` a folder for the site: new, empty, or an earlier build (it holds :data:`MARKER`).
    A folder holding anything else is refused, so that no file of the user's is replaced."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out} is a file, not a folder: give a folder for the site")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise BuildError(f"{out} already holds files that are not a build of this site: give an empty or new "
                         "folder (a rebuild may replace only an earlier build's pages)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()


def build(out: Path, only=None, log=print, chapters_dir: Path = CHAPTERS) -> List[Path]:
    """Write the site into ``out``; returns the pages written. ``only``: chapter file stems to build."""
    chapters = [read_chapter(p) for p in sorted(Path(chapters_dir).glob("*.md"))
                if only is None or p.stem in only]
    if not chapters:
        raise BuildError(f"no chapters to build in {chapters_dir}")
    claim(out)
    (out / "figures").mkdir(exist_ok=True)
    pages, formulas, where = [], [], []
    for i, chapter in enumerate(chapters):
        start, before = time.perf_counter(), len(formulas)
        body = "".join(section_html(chapter, j, s, out / "figures", formulas)
                       for j, s in enumerate(chapter.sections))
        where += [chapter.path.name] * (len(formulas) - before)
        pages.append((chapter, PAGE.format(title=html.escape(chapter.title), nav=nav_html(chapters, i), body=body)))
        log(f"{chapter.path.name}: {time.perf_counter() - start:.1f} s")
    if not (KATEX / "katex.min.css").exists():          # the pages' maths styles, even with no formula
        raise BuildError(f"KaTeX is not installed under {KATEX.parent}: run 'npm ci --prefix docs' (Node.js and npm)")
    rendered = typeset(formulas, where)
    written = []
    for chapter, page in pages:
        written.append(write_bytes(out / f"{chapter.slug}.html", restore_maths(page, rendered).encode()))
    index = "".join(f'<li><a href="{c.slug}.html">{html.escape(c.title)}</a></li>\n' for c, _ in pages)
    intro = markdown_html((HERE / "site-index.md").read_text(encoding="utf-8"))
    # the index's second half: the learners' map, every equation by the function where it stands
    by_equation = markdown_html(re.sub(r"^# ", "## ", (HERE / "learners-map.md").read_text(encoding="utf-8"),
                                       count=1, flags=re.M))
    write_bytes(out / "index.html", PAGE.format(title="The Annotated VAE", nav="", body=(
        f"<section class=\"single\"><div class=\"prose\">{intro}<ul class=\"chapters\">\n{index}</ul>"
        f"{by_equation}</div></section>")).encode())
    assets = out / "assets"
    if (assets / "katex").exists():
        shutil.rmtree(assets / "katex")
    shutil.copytree(KATEX, assets / "katex", ignore=shutil.ignore_patterns("*.js", "*.mjs", "contrib"))
    shutil.copy(HERE / "site.css", assets / "site.css")
    return [out / "index.html"] + written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", default="site", help="folder to write the site into [site]")
    parser.add_argument("--chapters", help="comma-separated chapter file stems to build (default: all)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        pages = build(Path(args.out), None if not args.chapters else args.chapters.split(","))
    except BuildError as e:
        print(f"docs/build.py: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(pages)} pages into {args.out} in {time.perf_counter() - start:.0f} s; "
          f"open {Path(args.out) / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
