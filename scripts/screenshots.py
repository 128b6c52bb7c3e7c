"""Screenshots of the chat page for review: an English, an Arabic and a Japanese conversation,
wide and narrow, written to bench_out/web/ (git-ignored).

Each conversation has two earlier turns (Markdown: code, lists, a table) kept in the browser's
storage, as the page keeps past chats, and one live turn answered through a real `kiln serve` by
a scripted bigram model that says a known sentence in that language (tests/bigram.py). Needs
Debian's Chromium (/usr/bin/chromium) and the playwright package (no browser is downloaded),
and for the Japanese page a CJK font (Debian: apt-get install fonts-noto-cjk).

    python scripts/screenshots.py [--out bench_out/web]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

CHROMIUM = os.environ.get("KILN_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync"]
LIVE = {  # model name: (question, the scripted answer)
    "demo-en": ("Why is the sky blue?",
                "The sky looks blue because air scatters blue light more than red."),
    "demo-ar": ("لماذا السماء زرقاء؟", "السماء زرقاء لأن الهواء يبعثر الضوء الأزرق أكثر من الأحمر."),
    "demo-ja": ("空はなぜ青いのですか？", "空が青いのは、空気が青い光を強く散乱させるからです。"),
}
EARLIER = {
    "demo-en": [
        ("How do I reverse a list in Python?",
         "Use slicing or `reversed()`:\n\n```python\nitems = [1, 2, 3]\nprint(items[::-1])"
         "          # [3, 2, 1]\nprint(list(reversed(items)))\n```\n\n- `items[::-1]` makes a "
         "**new** list\n- `items.reverse()` reverses *in place* and returns `None`")],
    "demo-ar": [
        ("ما هي عاصمة المغرب؟",
         "عاصمة المغرب هي **الرباط**، وأكبر مدنها هي الدار البيضاء.\n\n| المدينة | السكان |\n"
         "|---|---|\n| الدار البيضاء | ٣٫٧ مليون |\n| الرباط | ٥٧٧ ألف |\n\nيمكنك كتابة ذلك في "
         "بايثون هكذا: `capital = \"Rabat\"`")],
    "demo-ja": [
        ("「ありがとう」を丁寧に言うと？",
         "丁寧な言い方はいくつかあります。\n\n1. **ありがとうございます** — 一般的な丁寧語\n"
         "2. **誠にありがとうございます** — 改まった場面で\n\n> 例：本日はお越しいただき、"
         "誠にありがとうございます。")],
}
CORPUS = tuple(answer for _, answer in LIVE.values())
VOCAB = 1500
CTX = 2048


def build_store(work: Path) -> Path:
    """Scripted models for the three answers, imported into a fresh store; returns KILN_HOME."""
    import sentencepiece as spm

    import bigram
    from hf_models import kiln, make_spm_tokenizer
    from server_util import scripted_gguf

    make_spm_tokenizer(work / "tok", VOCAB, extra=CORPUS)
    sp = spm.SentencePieceProcessor(model_file=str(work / "tok" / "tokenizer.model"))
    start = sp.encode("x assistant:")[-1]
    home = work / "home"
    os.environ["KILN_HOME"] = str(home)
    for name, (_, answer) in LIVE.items():
        gguf = scripted_gguf(work / name, [[start] + bigram.spell(sp, answer)],
                             corpus=CORPUS, vocab_size=VOCAB, n_ctx=CTX)
        kiln("import", gguf, name, "--quiet")
    return home


def seeded_chats() -> list[dict]:
    now = int(time.time() * 1000)
    chats = []
    for i, (name, turns) in enumerate(EARLIER.items()):
        messages = []
        for q, a in turns:
            messages += [{"role": "user", "content": q},
                         {"role": "assistant", "content": a, "model": f"{name}:f32",
                          "stats": {"completion_tokens": 42, "approx": False,
                                    "prompt_tokens": 17, "tokens_per_second": 38.5}}]
        chats.append({"id": name, "title": turns[0][0], "model": f"{name}:f32", "system": "",
                      "created": now - 1000 * i, "updated": now - 1000 * i,
                      "messages": messages})
    return chats


def shoot(url: str, out: Path) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    written, outside = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        for name, (question, _) in LIVE.items():
            lang = name.split("-")[1]
            for label, viewport in (("", {"width": 1100, "height": 760}),
                                    ("-narrow", {"width": 390, "height": 760})):
                ctx = browser.new_context(viewport=viewport)
                ctx.on("request", lambda r: outside.append(r.url)
                       if urlsplit(r.url).hostname != "127.0.0.1" else None)
                page = ctx.new_page()
                page.goto(url)
                page.evaluate("""([chats, current]) => {
                    localStorage.setItem('kiln.chats', JSON.stringify(chats));
                    localStorage.setItem('kiln.current', current);
                }""", [seeded_chats(), name])
                page.reload()
                expect(page.locator("#model option")).to_have_count(len(LIVE))
                page.select_option("#model", f"{name}:f32")
                page.fill("#input", question)
                page.press("#input", "Enter")
                expect(page.locator(".msg.assistant .stats:not(:empty)")).to_have_count(2, timeout=60_000)
                page.locator("#input").blur()
                path = out / f"{lang}{label}.png"
                page.screenshot(path=str(path))
                written.append(path)
                ctx.close()
        browser.close()
    if outside:
        raise SystemExit(f"requests left loopback: {outside}")
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "web")
    args = ap.parse_args()
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    from runtime.server import ServerConfig
    from server_util import Server

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kiln-shots-") as tmp:
        home = build_store(Path(tmp))
        with Server(ServerConfig(threads=1, max_loaded=3, n_ctx=CTX, store_home=home)) as srv:
            for path in shoot(srv.url + "/", args.out):
                print(path)
    print(json.dumps({"screenshots": len(LIVE) * 2, "out": str(args.out)}))


if __name__ == "__main__":
    main()
