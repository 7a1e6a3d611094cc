"""The ``web_browsing`` environment: views, navigation state, the site itself and the task set."""

import random
from collections import deque

import pytest

from envs import make_env
from envs.base import ToolError, WriteForbiddenError
from envs.web_browsing import LINES_PER_VIEW, MAX_URL_CHARS, WebBrowsingEnv, load_site, site_from_m3_pages
from sca.benchmarks import benchmark
from sca.benchmarks.m3.scoring import answers_match
from sca.benchmarks.m3.tasks import run_solution

NAVIGATION = {"click_url", "go_to_previous_page", "scroll_down", "scroll_up"}


@pytest.fixture()
def env():
    e = make_env("web_browsing")
    e.reset()
    return e


def test_tools_and_kinds(env):
    kinds = {t.name: t.kind for t in env.tools()}
    assert kinds == {"click_url": "write", "go_to_previous_page": "write", "scroll_down": "write",
                     "scroll_up": "write", "view": "read", "calculator": "read"}
    assert env.user_facing is False and env.policy and env.challenger_guidance
    for t in env.tools():
        assert t.description and t.returns, t.name


def test_starts_at_the_landing_page_five_lines_at_a_time(env):
    v = env.call("view")
    assert v["url"] == "/" and v["title"] == "Home"
    assert v["position"] == "lines 1-5 of 9" and len(v["lines"]) == LINES_PER_VIEW
    assert v["links"] == ["/shop", "/deals", "/journal"]
    assert v["more_above"] is False and v["more_below"] is True and "note" not in v


def test_scrolling(env):
    down = env.call("scroll_down")
    assert down["position"] == "lines 6-9 of 9" and len(down["lines"]) == 4
    assert down["links"] == ["/stores", "/shipping", "/about"]
    assert down["more_above"] and not down["more_below"]
    bottom = env.call("scroll_down")
    assert bottom["note"] == "already at the bottom of the page" and bottom["position"] == "lines 6-9 of 9"
    up = env.call("scroll_up")
    assert up["position"] == "lines 1-5 of 9"
    top = env.call("scroll_up")
    assert top["note"] == "already at the top of the page" and top["position"] == "lines 1-5 of 9"


def test_clicking_follows_links_of_the_current_page_only(env):
    v = env.call("click_url", {"url": "/about"})  # on the page, though not in the first view
    assert v["url"] == "/about" and v["position"].startswith("lines 1-")
    before = env.state_hash()
    with pytest.raises(ToolError, match="not a link on the current page"):
        env.call("click_url", {"url": "/shop/tents"})  # exists, but not linked from /about
    with pytest.raises(ToolError, match="not a link"):
        env.call("click_url", {"url": "/no/such/page"})
    assert env.state_hash() == before and env.call("view")["url"] == "/about"


@pytest.mark.parametrize("spelling", ["/shop", "'/shop'", " /shop/ ", "shop", "[Shop all gear](/shop)"])
def test_url_spellings(env, spelling):
    assert env.call("click_url", {"url": spelling})["url"] == "/shop"


def test_a_url_too_long_to_read_cheaply_is_refused(env):
    """Reading a link out of "[[[[..." costs time quadratic in its length (a second for 20,000
    characters): a url past MAX_URL_CHARS is refused unread; one within it is read as ever."""
    before = env.state_hash()
    for url in ["[" * 200_000, "[Clickable '" * 20_000, "/shop" + " " * MAX_URL_CHARS]:
        with pytest.raises(ToolError, match=f"at most {MAX_URL_CHARS}"):
            env.call("click_url", {"url": url})
    assert env.state_hash() == before
    with pytest.raises(ToolError, match="not a link"):
        env.call("click_url", {"url": "[" * MAX_URL_CHARS})
    assert env.call("click_url", {"url": "/shop" + " " * (MAX_URL_CHARS - 5)})["url"] == "/shop"


def test_back_returns_to_the_position_left(env):
    env.call("scroll_down")
    env.call("click_url", {"url": "/stores"})
    env.call("click_url", {"url": "/stores/bergen"})
    back = env.call("go_to_previous_page")
    assert back["url"] == "/stores" and back["position"].startswith("lines 1-")
    home = env.call("go_to_previous_page")
    assert home["url"] == "/" and home["position"] == "lines 6-9 of 9"
    with pytest.raises(ToolError, match="no previous page"):
        env.call("go_to_previous_page")
    assert env.call("view")["url"] == "/"


def test_reset_and_state_hash(env):
    start = env.state_hash()
    env.call("view")
    env.call("calculator", {"expression": "1 + 1"})
    assert env.state_hash() == start  # read tools do not move
    env.call("scroll_down")
    scrolled = env.state_hash()
    assert scrolled != start
    env.call("click_url", {"url": "/about"})
    at_about = env.state_hash()
    env.call("go_to_previous_page")
    assert env.state_hash() == scrolled  # same page, offset and (empty) history
    env.call("click_url", {"url": "/about"})
    assert env.state_hash() == at_about
    env.reset()
    assert env.state_hash() == start and env.call("view")["url"] == "/"
    with pytest.raises(ToolError):
        env.call("go_to_previous_page")  # history is cleared too
    assert WebBrowsingEnv().state_hash() == start


def test_read_only_mode_forbids_navigation(env):
    for name in NAVIGATION:
        args = {"url": "/shop"} if name == "click_url" else {}
        with pytest.raises(WriteForbiddenError):
            env.call(name, args, allow_write=False)
    assert env.call("view", allow_write=False)["url"] == "/"
    assert env.call("calculator", {"expression": "2 * 21"}, allow_write=False) == 42


@pytest.mark.parametrize("name,args,message", [
    ("click_url", {"url": 3}, "must be a string"),
    ("click_url", {}, "missing required argument"),
    ("scroll_down", {"lines": 3}, "unexpected keyword argument"),
    ("calculator", {"expression": "import os"}, "unsupported character"),
    ("calculator", {"expression": "(1 + 2"}, "parenthesis"),
    ("calculator", {"expression": None}, "must be a string"),
])
def test_bad_arguments(env, name, args, message):
    before = env.state_hash()
    with pytest.raises(ToolError, match=message):
        env.call(name, args)
    assert env.state_hash() == before
    assert env.call("view")["url"] == "/"


def test_calculator(env):
    assert env.call("calculator", {"expression": "(289 + 39.95) * 0.9"}) == pytest.approx(296.055)


def test_site_links_are_sound_and_every_page_is_reachable():
    site = load_site()
    env = WebBrowsingEnv(site)
    pages = site["pages"]
    for url, page in pages.items():
        assert page["lines"], url
        for link in env._page_links[url]:
            assert link in pages, f"broken link {link} on {url}"
    seen, queue = {site["landing"]}, deque([site["landing"]])
    while queue:
        for link in env._page_links[queue.popleft()]:
            if link not in seen:
                seen.add(link)
                queue.append(link)
    assert seen == set(pages)
    depth = max(url.count("/") for url in pages)
    assert depth >= 4 and len(pages) >= 50
    assert sum(len(p["lines"]) > LINES_PER_VIEW for p in pages.values()) >= 40


def test_m3_style_site_lets_any_page_open_by_url():
    records = [
        {"name": "/", "content": "Welcome\n- Products [Clickable '/products']"},
        {"name": "/products", "content": "Products:\n- Kettle [Clickable '/products/kettle']"},
        {"name": "/products/kettle", "content": "Item: Kettle\nPrice: $42.50"},
        {"name": "/hidden", "content": "not linked anywhere"},
    ]
    env = WebBrowsingEnv(site_from_m3_pages(records))
    assert env.call("view")["links"] == ["/products"]
    assert env.call("click_url", {"url": "'/products/kettle'"})["lines"][1] == "Price: $42.50"
    assert env.call("click_url", {"url": "/hidden"})["url"] == "/hidden"
    with pytest.raises(ToolError, match="no page"):
        env.call("click_url", {"url": "/missing"})
    with pytest.raises(ValueError):
        site_from_m3_pages(records, landing="/nowhere")


def test_challenger_context(env):
    ctx = env.challenger_context(random.Random(0))
    assert ctx["start_url"] == "/" and ctx["lines_per_view"] == LINES_PER_VIEW and ctx["hint"]


def test_task_set_size_and_fields():
    bench = benchmark("web_browsing")
    test = bench.tasks("test")
    assert len(test) >= 30
    assert set(bench.splits()) == {"test", "train"}
    ids = [t.id for t in bench.tasks()]
    assert len(ids) == len(set(ids))
    for t in bench.tasks():
        assert t.instruction and t.data["solution"] and "answer" in t.data
        assert t.data["domain"] == "web_browsing" and t.data["env"] == "web_browsing"


_TASKS = benchmark("web_browsing").tasks()


@pytest.mark.parametrize("task", _TASKS, ids=[t.id for t in _TASKS])
def test_reference_solution_reaches_the_gold_answer(task):
    env = WebBrowsingEnv()
    calls = []
    original = env._call

    def counting(name, args):
        calls.append(name)
        return original(name, args)

    env._call = counting
    answer = run_solution(env, task.data["solution"])
    assert answers_match(answer, task.data["answer"]), (answer, task.data["answer"])
    assert "click_url" in calls and sum(c in NAVIGATION for c in calls) >= 3, "every task needs several moves"


def test_evaluation_function_rejects_wrong_answers():
    task = next(t for t in benchmark("web_browsing").tasks("test") if isinstance(t.data["answer"], float))
    namespace: dict = {}
    exec(task.data["evaluation_function"], namespace)
    assert namespace["evaluate"](f"{task.data['answer']:.2f}") is True
    assert namespace["evaluate"](task.data["answer"] * 1.5) is False
    assert namespace["evaluate"](None) is False
