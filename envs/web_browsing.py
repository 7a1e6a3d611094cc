"""The ``web_browsing`` environment: a small simulated website seen five lines at a time.

As in M3ToolEval's web-browsing domain, the agent starts on the landing page
and moves with ``click_url``, ``go_to_previous_page``, ``scroll_down`` and
``scroll_up``; ``view`` shows the current window again and ``calculator``
does arithmetic. The site is our own (an outdoor-gear shop: products,
prices and stock, staff pages, stores, articles with tables), with links
written ``[text](/url)``.

Every tool answers with the current view::

    {"url": "/shop/tents", "title": "Tents", "position": "lines 1-5 of 10",
     "lines": [...5 lines...], "links": [urls on those lines],
     "more_above": false, "more_below": true}

plus ``"note"`` when a scroll could not move.

State and tool kinds: the hidden state is the browsing position (current
page, scroll offset, history stack of earlier positions). The navigation
tools change it, so they are tagged "write"; ``view`` and ``calculator`` are
"read". A CaT ``evaluate`` runs with read tools only, which is what web tasks
need: their ``evaluate(answer)`` checks the answer, never the position.
``reset`` returns to the top of the landing page with an empty history.

By default ``click_url`` follows only links present on the current page (the
agent must find them); a site loaded from M3ToolEval's own pages uses that
benchmark's rule instead: any page of the site may be opened by its URL. A ``url`` argument
longer than ``MAX_URL_CHARS`` is refused before it is read (reading a link out of it costs time
quadratic in its length); every other tool's work is linear in its input, and ``calculator`` is
the bounded one of :mod:`envs._m3.arith`.
"""

import hashlib
import json
import re
from typing import Any

from envs._m3 import DATA_DIR
from envs._m3.toolkit import CalculatorTool, ToolkitEnvironment, as_text, tool
from envs.base import EnvSpec, ToolError

__all__ = ["WebBrowsingEnv", "LINES_PER_VIEW", "MAX_URL_CHARS", "SPEC", "load_site", "site_from_m3_pages", "make"]

LINES_PER_VIEW = 5
#: longest ``url`` argument taken (the site's links are under 70 characters): reading a link out of
#: a text with the link pattern costs time quadratic in its length ("[[[[..." has a link start
#: at every character), so a longer text is refused before it is read
MAX_URL_CHARS = 500
SITE_FILE = "site.json"

# [text](/url) on our pages; [Clickable '/url'] on M3ToolEval's.
_LINK = re.compile(r"\[[^\]\n]*\]\((/[^)\s]*)\)|\[Clickable '([^']*)'\]")

CHALLENGER_GUIDANCE = (
    "Browse the site first: open pages, scroll through them and note facts (names, prices, numbers in "
    "tables, links between pages). Then pick a question whose answer needs facts from one to three pages, "
    "possibly combined with arithmetic. Solve it yourself with the tools, revise until the answer is "
    "certain and unique, then answer in CaT form: evaluate(answer) compares the answer with the value you "
    "found; failure cases reach wrong answers (a wrong page, a missed line, a wrong calculation)."
)

POLICY = (
    "You browse a website that shows five lines at a time, starting from its home page. Use the tools to "
    "navigate and read; follow links by their URL. When you are done, give only the final answer, in the "
    "format the task asks for, without explanation. Numbers are checked with a small relative tolerance."
)


def load_site(path: Any = None) -> dict[str, Any]:
    """A site as ``{"name", "landing", "pages": {url: {"title", "lines"}}}`` (default: our shop)."""
    with open(path or DATA_DIR / SITE_FILE, encoding="utf-8") as f:
        return json.load(f)


def site_from_m3_pages(records: list[dict[str, Any]], landing: str = "/") -> dict[str, Any]:
    """A site from M3ToolEval's page records (``{"name": url, "content": text}``, one per page)."""
    pages = {r["name"]: {"title": r["name"], "lines": r["content"].split("\n")} for r in records}
    if landing not in pages:
        raise ValueError(f"landing page {landing!r} is not among the pages")
    return {"name": "M3ToolEval web site", "landing": landing, "pages": pages, "links_anywhere": True}


class WebBrowsingEnv(ToolkitEnvironment, CalculatorTool):
    """A simulated website, five lines at a time; the state is where the agent is looking."""

    name = "web_browsing"
    description = ("A simulated website (an outdoor-gear shop with products, staff pages, stores and articles), "
                   "seen five lines at a time; answer questions by browsing it.")
    user_facing = False
    challenger_guidance = CHALLENGER_GUIDANCE
    outcome_state = False  # the "writes" only move the position: a task is judged on its answer

    def __init__(self, site: dict[str, Any] | None = None):
        """`site`: pages to browse (see :func:`load_site`); ``links_anywhere`` lets any page be opened by URL."""
        site = site or load_site()
        self._pages: dict[str, dict[str, Any]] = {
            url: {"title": page.get("title", url), "lines": list(page["lines"])} for url, page in site["pages"].items()
        }
        self._landing: str = site.get("landing", "/")
        if self._landing not in self._pages:
            raise ValueError(f"landing page {self._landing!r} is not among the pages")
        self._links_anywhere = bool(site.get("links_anywhere", False))
        self._page_links = {url: [u for line in p["lines"] for u in _links(line)] for url, p in self._pages.items()}
        self.reset()

    # -- Environment ----------------------------------------------------------
    @property
    def policy(self) -> str:
        return POLICY

    def reset(self) -> None:
        self._url = self._landing
        self._offset = 0
        self._history: list[tuple[str, int]] = []

    def state_hash(self) -> str:
        state = {"url": self._url, "offset": self._offset, "history": self._history}
        return hashlib.sha256(json.dumps(state).encode()).hexdigest()

    def challenger_context(self, rng: Any) -> dict[str, Any]:
        """Where browsing starts, and the recipe for a good task."""
        return {"start_url": self._landing, "lines_per_view": LINES_PER_VIEW, "hint": CHALLENGER_GUIDANCE}

    # -- tools ----------------------------------------------------------------
    @tool("write")
    def click_url(self, url: str) -> dict:
        """Opens a link of the current page, shown in the page as [text](/url); the view starts at its top.

        Args:
            url: the link's URL, e.g. "/shop"
        Returns: the view of the opened page
        """
        text = as_text(url, "url")
        if len(text) > MAX_URL_CHARS:
            raise ToolError(f"url is {len(text):,} characters long; a URL of this site has at most {MAX_URL_CHARS}")
        target = _normalise_url(text)
        if self._links_anywhere:
            if target not in self._pages:
                raise ToolError(f"no page at {target!r}")
        elif target not in self._page_links[self._url] or target not in self._pages:
            raise ToolError(f"{target!r} is not a link on the current page {self._url!r}; "
                            f"links in view: {', '.join(self._visible_links()) or 'none'}")
        self._history.append((self._url, self._offset))
        self._url, self._offset = target, 0
        return self._view()

    @tool("write")
    def go_to_previous_page(self) -> dict:
        """Goes back to the previous page, at the position it was left.

        Returns: the view of the previous page
        """
        if not self._history:
            raise ToolError("there is no previous page: this is the first page visited")
        self._url, self._offset = self._history.pop()
        return self._view()

    @tool("write")
    def scroll_down(self) -> dict:
        """Scrolls down by five lines.

        Returns: the new view (unchanged, with a note, at the bottom of the page)
        """
        if self._offset + LINES_PER_VIEW >= len(self._lines()):
            return self._view(note="already at the bottom of the page")
        self._offset += LINES_PER_VIEW
        return self._view()

    @tool("write")
    def scroll_up(self) -> dict:
        """Scrolls up by five lines.

        Returns: the new view (unchanged, with a note, at the top of the page)
        """
        if self._offset == 0:
            return self._view(note="already at the top of the page")
        self._offset = max(0, self._offset - LINES_PER_VIEW)
        return self._view()

    @tool("read")
    def view(self) -> dict:
        """Shows the current view again: URL, title, position, the five visible lines and their links.

        Returns: the current view
        """
        return self._view()

    # -- helpers ----------------------------------------------------------------
    def _lines(self) -> list[str]:
        return self._pages[self._url]["lines"]

    def _visible(self) -> list[str]:
        return self._lines()[self._offset:self._offset + LINES_PER_VIEW]

    def _visible_links(self) -> list[str]:
        return [u for line in self._visible() for u in _links(line)]

    def _view(self, note: str | None = None) -> dict[str, Any]:
        total = len(self._lines())
        visible = self._visible()
        first, last = (self._offset + 1, self._offset + len(visible)) if visible else (0, 0)
        view: dict[str, Any] = {
            "url": self._url,
            "title": self._pages[self._url]["title"],
            "position": f"lines {first}-{last} of {total}",
            "lines": visible,
            "links": self._visible_links(),
            "more_above": self._offset > 0,
            "more_below": self._offset + LINES_PER_VIEW < total,
        }
        if note:
            view["note"] = note
        return view


def _links(line: str) -> list[str]:
    return [_normalise_url(m.group(1) or m.group(2)) for m in _LINK.finditer(line)]


def _normalise_url(url: str) -> str:
    """``" '/shop/' "`` and ``"shop"`` -> ``"/shop"``; a whole link ``[text](/url)`` -> ``"/url"``."""
    text = url.strip()
    found = _LINK.search(text)
    if found:
        text = found.group(1) or found.group(2)
    text = text.strip().strip("'\"").strip()
    if text and not text.startswith("/"):
        text = "/" + text
    if len(text) > 1:
        text = text.rstrip("/")
    return text


def make() -> WebBrowsingEnv:
    return WebBrowsingEnv()


SPEC = EnvSpec.of_class(WebBrowsingEnv, make, tools=WebBrowsingEnv.class_tools)
