"""The chat page (runtime/web/) in a real browser: Playwright drives Debian's Chromium, headless,
against a real `kiln serve` on loopback whose store holds scripted bigram models (tests/bigram.py),
so every answer is known in advance. Every request the browser makes is recorded and must stay
on loopback."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("sentencepiece")
pytest.importorskip("fastapi", reason="kiln serve's dependencies are not installed")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install -e '.[test]')")
CHROMIUM = Path(os.environ.get("KILN_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does it)",
                allow_module_level=True)

import bigram  # noqa: E402
from hf_models import kiln, make_spm_tokenizer  # noqa: E402
from server_util import Server, scripted_gguf, wait_for  # noqa: E402

from runtime.server import ServerConfig  # noqa: E402

expect = sync_api.expect
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync"]
ANSWER = "Hello there, world!"
INJECTION = "<img src onerror=hit()>"
LOOP = "abc "            # then ":" (the prompt's last token): "abc :abc :..." until stopped
LOOP_CTX = 32768
KEY = "kiln-web-test-key"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "bench_out" / "web"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A model store with three scripted models, as `kiln import` puts them there."""
    import sentencepiece as spm

    tok = tmp_path_factory.mktemp("tok")
    make_spm_tokenizer(tok)
    sp = spm.SentencePieceProcessor(model_file=str(tok / "tokenizer.model"))
    start = sp.encode("x assistant:")[-1]
    mk = tmp_path_factory.mktemp
    answer = bigram.spell(sp, ANSWER)
    ggufs = {"sky": scripted_gguf(mk("sky"), [[start] + answer]),
             "html": scripted_gguf(mk("html"), [[start] + bigram.spell(sp, INJECTION)]),
             "loop": scripted_gguf(mk("loop"), [], cycle=[start] + bigram.text_chain(sp, LOOP),
                                   n_ctx=LOOP_CTX)}
    home = mk("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("KILN_HOME", str(home))
    for name, path in ggufs.items():
        kiln("import", path, name, "--quiet")
    yield {"home": home, "answer_tokens": len(answer)}
    mp.undo()


@pytest.fixture(scope="module")
def srv(store):
    with Server(ServerConfig(n_ctx=LOOP_CTX, max_loaded=3, threads=1,
                             store_home=store["home"])) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def open_page(browser):
    """open_page(url, **context options) -> a fresh browser profile's page at url. Afterwards:
    no request left loopback and no script error happened."""
    contexts, seen, errors = [], [], []

    def opener(url: str, **options):
        ctx = browser.new_context(**{"viewport": {"width": 1100, "height": 760}, **options})
        ctx.on("request", lambda r: seen.append(r.url))
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" and
                "Failed to load resource" not in m.text else None)
        page.goto(url)
        return page

    yield opener
    for ctx in contexts:
        ctx.close()
    outside = [u for u in seen if not u.startswith(("data:", "blob:"))
               and urlsplit(u).hostname != "127.0.0.1"]
    assert not outside, f"requests off loopback: {outside}"
    assert seen or not contexts
    assert not errors, errors


@pytest.fixture
def page(open_page, srv):
    page = open_page(srv.url + "/")
    expect(page.locator("#model option")).to_have_count(3)
    return page


def ask(page, text: str, model: str | None = None) -> None:
    if model:
        page.select_option("#model", model)
    page.fill("#input", text)
    page.press("#input", "Enter")


def answers(page):
    return page.locator(".msg.assistant .content")


def wait_answered(page, n: int) -> None:
    """n answers on screen, each finished (its stats line written)."""
    expect(page.locator(".msg.assistant .stats:not(:empty)")).to_have_count(n, timeout=30_000)


def test_picker_lists_the_store_and_the_answer_streams_in(page, store):
    options = page.locator("#model option").all_inner_texts()
    assert [o.split(" ")[0] for o in options] == ["html:f32", "loop:f32", "sky:f32"]
    for o in options:  # family, quantization and size, from the store
        assert "llama" in o and "F32" in o and "KB" in o, o
    ask(page, "What colour is the sky?", "sky:f32")
    wait_answered(page, 1)
    expect(answers(page)).to_have_text([ANSWER])
    stats = page.locator(".msg.assistant .stats").inner_text()
    assert f"{store['answer_tokens']} tokens" in stats and "tok/s" in stats, stats
    assert "prompt" in stats
    # copy the answer
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.locator(".msg.assistant .copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == ANSWER
    # regenerate: the same (greedy) answer replaces the old one
    page.locator(".msg.assistant .regenerate").click()
    wait_answered(page, 1)
    expect(answers(page)).to_have_text([ANSWER])
    assert page.locator(".msg").count() == 2
    # a new chat starts empty; the first stays in the list
    page.click("#new-chat")
    expect(page.locator(".msg")).to_have_count(0)
    ask(page, "Second chat")
    wait_answered(page, 1)
    expect(page.locator("#chat-list li")).to_have_count(2)


def test_stop_ends_the_generation_on_the_server(page, srv):
    ask(page, "go on forever", "loop:f32")
    streaming = page.locator(".msg.streaming .content")
    page.evaluate("""() => {
        window.__lengths = [];
        const box = document.getElementById('messages');
        new MutationObserver(() => {
            const c = box.querySelector('.msg.streaming .content');
            if (c) window.__lengths.push(c.textContent.length);
        }).observe(box, {subtree: true, childList: true, characterData: true});
    }""")
    expect(streaming).to_contain_text(re.compile(r"(abc :){5}"), timeout=30_000)
    assert srv.pool.jobs, "the server should be generating now"
    page.click("#stop")
    expect(page.locator(".msg.assistant .note")).to_contain_text("Stopped")
    wait_for(lambda: not srv.pool.jobs, timeout=10, what="the generation to end on the server")
    record = srv.pool.cancellations[-1]
    assert record.model == "loop:f32" and record.started
    assert record.tokens_at_end - record.tokens_at_cancel <= 2, record
    assert record.tokens_at_end < LOOP_CTX // 2 - 100, record   # far from the natural end
    assert not srv.pool.loaded["loop:f32"].gate.busy
    lengths = page.evaluate("window.__lengths")
    assert len(set(lengths)) >= 3, "the answer should have grown piece by piece"
    text = answers(page).inner_text()
    assert re.fullmatch(r"(abc :)+(a|ab|abc)?", text.strip()), text[:80]
    page.wait_for_timeout(300)
    assert answers(page).inner_text() == text, "nothing arrives after Stop"
    assert "~" in page.locator(".msg.assistant .stats").inner_text()
    # the model is free: the next question is answered at once
    ask(page, "and now?", "sky:f32")
    wait_answered(page, 2)
    expect(answers(page).nth(1)).to_have_text(ANSWER)


def test_chats_survive_a_reload_and_export(page):
    ask(page, "Remember me", "sky:f32")
    wait_answered(page, 1)
    page.reload()
    expect(page.locator("#chat-list li")).to_have_count(1)
    expect(page.locator("#chat-list .open")).to_have_text("Remember me")
    page.click("#new-chat")
    expect(page.locator(".msg")).to_have_count(0)
    page.click("#chat-list .open")
    expect(page.locator(".msg.user .content")).to_have_text(["Remember me"])
    expect(answers(page)).to_have_text([ANSWER])
    with page.expect_download() as dl:
        page.click("#export-json")
    data = json.loads(Path(dl.value.path()).read_text(encoding="utf-8"))
    assert data["model"] == "sky:f32"
    assert [(m["role"], m["content"]) for m in data["messages"]] == [
        ("user", "Remember me"), ("assistant", ANSWER)]
    assert dl.value.suggested_filename.endswith(".json")
    with page.expect_download() as dl:
        page.click("#export-md")
    md = Path(dl.value.path()).read_text(encoding="utf-8")
    assert "## User\n\nRemember me" in md and f"## Assistant\n\n{ANSWER}" in md


def test_arabic_message_is_right_to_left(page):
    ask(page, "ما لون السماء؟", "sky:f32")
    wait_answered(page, 1)
    direction = "e => getComputedStyle(e).direction"
    assert page.eval_on_selector(".msg.user .content", direction) == "rtl"
    assert page.eval_on_selector(".msg.assistant .content", direction) == "ltr"
    assert page.eval_on_selector("body", direction) == "ltr"
    assert page.eval_on_selector_all(".msg .content", "els => els.map(e => e.dir)") == ["auto"] * 2
    assert page.eval_on_selector("#chat-list .open", direction) == "rtl"
    # the bubble sits on the right-hand side
    box = page.locator(".msg.user .content").bounding_box()
    pane = page.locator("#messages").bounding_box()
    assert box["x"] + box["width"] > pane["x"] + pane["width"] - 40


def test_enter_confirming_an_ime_composition_does_not_send(page):
    page.focus("#input")
    # Chromium's own IME path: a composition is open while Enter is pressed
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.imeSetComposition", {"text": "にほん", "selectionStart": 3, "selectionEnd": 3})
    page.keyboard.press("Enter")
    cdp.send("Input.insertText", {"text": "日本"})   # the IME commits the composition
    # the events as a Safari-style IME sends them: compositionend first, then keyCode 229
    page.dispatch_event("#input", "compositionstart")
    page.evaluate("""() => {
        const input = document.getElementById('input');
        const key = (init) => input.dispatchEvent(new KeyboardEvent('keydown',
            {key: 'Enter', code: 'Enter', bubbles: true, cancelable: true, ...init}));
        key({isComposing: true, keyCode: 229});
        input.dispatchEvent(new CompositionEvent('compositionend', {data: '語', bubbles: true}));
        key({isComposing: false, keyCode: 229});
    }""")
    page.wait_for_timeout(200)
    expect(page.locator(".msg")).to_have_count(0)
    assert page.input_value("#input").startswith("日本")
    page.keyboard.press("Enter")                    # a plain Enter sends
    expect(page.locator(".msg.user .content")).to_have_text(["日本"])
    wait_answered(page, 1)


def test_html_from_the_model_shows_as_text(open_page, srv):
    page = open_page(srv.url + "/")
    page.add_init_script("window.__hits = 0; window.hit = () => { window.__hits += 1; };")
    page.reload()
    expect(page.locator("#model option")).to_have_count(3)
    ask(page, "say something dangerous", "html:f32")
    wait_answered(page, 1)
    expect(answers(page)).to_have_text([INJECTION])
    assert page.locator("#messages img, #messages script").count() == 0
    assert "&lt;img" in answers(page).inner_html()
    page.wait_for_timeout(200)
    assert page.evaluate("window.__hits") == 0
    assert page.evaluate("typeof window.hit") == "function"   # the trap was armed


MARKDOWN = """# Title

Some **bold**, *italic*, `<script>alert(1)</script>` and <b>raw</b> <img src=x onerror=hit()>.

```python
if a < b and c > d:
    print("<b>**not bold**</b>")   # kept as typed
```

- one
- two [link](https://example.org/?a=1&b=2) [bad](javascript:hit())
- ![pic](https://example.org/p.png)

| k | v |
|---|---|
| <i>x</i> | 2 |
"""


def test_markdown_rendering_is_safe(page):
    page.evaluate("() => { window.__hits = 0; window.hit = () => { window.__hits += 1; }; }")
    page.evaluate("""md => {
        const d = document.createElement('div');
        d.id = 'md';
        d.innerHTML = KilnMarkdown.render(md);
        document.body.append(d);
    }""", MARKDOWN)
    md = page.locator("#md")
    assert md.locator("h1").inner_text() == "Title"
    assert md.locator("strong").all_inner_texts() == ["bold"]
    assert md.locator("em").all_inner_texts() == ["italic"]
    assert md.locator("p code").inner_text() == "<script>alert(1)</script>"
    assert md.locator("pre code").inner_text() == (
        'if a < b and c > d:\n    print("<b>**not bold**</b>")   # kept as typed')
    assert md.locator(".code .lang").inner_text() == "python"
    assert md.locator("li").count() == 3
    links = md.locator("a")
    assert links.count() == 2   # the javascript: link stays text; the image becomes a link
    assert links.nth(0).get_attribute("href") == "https://example.org/?a=1&b=2"
    assert links.nth(1).inner_text() == "image: pic"
    assert "[bad](javascript:hit())" in md.inner_text()
    assert md.locator("td").all_inner_texts() == ["<i>x</i>", "2"]
    assert md.locator("script, img, b, i, iframe").count() == 0
    assert "<img src=x onerror=hit()>" in md.locator("p").first.inner_text()
    page.wait_for_timeout(100)
    assert page.evaluate("window.__hits") == 0


def test_context_full_messages(page):
    # sky's context is 256 tokens, 128 kept to answer in: the fourth turn drops the oldest
    for i, q in enumerate(["first question", "second question", "third question",
                           "fourth question"]):
        ask(page, q, "sky:f32")
        wait_answered(page, i + 1)
    notes = page.locator(".msg.assistant .note").all_inner_texts()
    assert notes and "oldest" in notes[-1] and "dropped" in notes[-1], notes
    # one message too long for the context even alone: a clear error, no answer
    ask(page, "long " * 150)
    expect(page.locator(".msg.assistant .error")).to_contain_text("Context full")
    expect(page.locator(".msg.assistant .error")).to_contain_text("256")


def test_model_that_fails_to_load(open_page, tmp_path, store):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with Server(ServerConfig(threads=1, store_home=tmp_path / "empty")) as s:
        s.pool.add_given(str(broken), broken)
        page = open_page(s.url + "/")
        expect(page.locator("#model option")).to_have_count(1)
        ask(page, "hello?", "broken")
        error = page.locator(".msg.assistant .error")
        expect(error).to_contain_text('The model "broken" failed to load')
        expect(error).to_contain_text("not a readable GGUF file")
        expect(page.locator(".msg.assistant .regenerate")).to_have_text("Retry")


def test_api_key_is_asked_once_and_kept(open_page, store):
    with Server(ServerConfig(threads=1, api_key=KEY, store_home=store["home"])) as s:
        page = open_page(s.url + "/")
        expect(page.locator("#key-dialog")).to_be_visible()
        page.fill("#key-input", "wrong")
        page.press("#key-input", "Enter")
        expect(page.locator("#key-error")).to_contain_text("refused")
        expect(page.locator("#key-dialog")).to_be_visible()
        page.fill("#key-input", KEY)
        page.press("#key-input", "Enter")
        expect(page.locator("#key-dialog")).to_be_hidden()
        expect(page.locator("#model option")).to_have_count(3)
        ask(page, "with a key", "sky:f32")
        wait_answered(page, 1)
        expect(answers(page)).to_have_text([ANSWER])
        page.reload()
        expect(page.locator("#model option")).to_have_count(3)
        expect(page.locator("#key-dialog")).to_be_hidden()


def test_narrow_window(open_page, srv):
    page = open_page(srv.url + "/", viewport={"width": 380, "height": 720})
    expect(page.locator("#model option")).to_have_count(3)
    ask(page, "ما لون السماء؟ A question on a phone-sized window", "sky:f32")
    wait_answered(page, 1)
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways: {width}"
    assert page.locator("#sidebar").is_hidden()
    for sel in ("#send", "#input", "#model", "#toggle-sidebar"):
        box = page.locator(sel).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 380, (sel, box)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "narrow.png"))
    page.click("#toggle-sidebar")
    expect(page.locator("#sidebar")).to_be_visible()
    expect(page.locator("#chat-list li")).to_have_count(1)
    page.screenshot(path=str(SCREENSHOTS / "narrow-chats.png"))
    page.click("#chat-list .open")
    expect(page.locator("#sidebar")).to_be_hidden()


def test_kiln_chat_web_serves_and_opens_the_page(open_page, store, tmp_path):
    """`kiln chat MODEL --web`: the server starts and the browser ($BROWSER) opens its page
    with MODEL chosen."""
    import signal
    import subprocess
    import sys

    opened = tmp_path / "opened.txt"
    fake_browser = tmp_path / "browser.sh"
    fake_browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    fake_browser.chmod(0o755)
    env = {**os.environ, "BROWSER": str(fake_browser), "KILN_HOME": str(store["home"])}
    import runtime

    repo = Path(runtime.__file__).parent.parent   # the code under test, run as a command
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "chat", "sky", "--web",
                             "--threads", "1"], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: opened.exists() and opened.read_text().strip() or proc.poll() is not None,
                 timeout=60, what="kiln chat --web to open the browser")
        assert proc.poll() is None, proc.communicate()[1]
        url = opened.read_text().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/#model=sky", url), url
        page = open_page(url)
        expect(page.locator("#model option")).to_have_count(3)
        assert page.input_value("#model") == "sky:f32"
        ask(page, "from kiln chat --web")
        wait_answered(page, 1)
        expect(answers(page)).to_have_text([ANSWER])
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "chat page: http://127.0.0.1:" in err


def test_system_prompt_reaches_the_model_and_stays_with_the_chat(page, srv):
    page.click("#toggle-system")
    page.fill("#system", "Answer in one line.")
    ask(page, "Why?", "sky:f32")
    wait_answered(page, 1)
    assert "system: Answer in one line. | user: Why? | assistant:" in \
        srv.loaded("sky:f32").last_prompt
    page.reload()
    page.click("#chat-list .open")
    assert page.input_value("#system") == "Answer in one line."


def test_code_block_copy_button_copies_the_code_as_typed(page):
    code = 'for i in range(3):\n    print("<b>", i)  # **kept**'
    chat = {"id": "c1", "title": "code", "model": "sky:f32", "system": "", "created": 1,
            "updated": 1, "messages": [{"role": "user", "content": "code please"},
                                       {"role": "assistant", "content": f"```python\n{code}\n```"}]}
    page.evaluate("""chat => {
        localStorage.setItem('kiln.chats', JSON.stringify([chat]));
        localStorage.setItem('kiln.current', chat.id);
    }""", chat)
    page.reload()
    expect(page.locator(".msg.assistant pre code")).to_have_text(code)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click(".copy-code")
    assert page.evaluate("navigator.clipboard.readText()") == code
