"""`kiln serve` driven by the official `openai` and `ollama` Python clients, on scripted models
whose answers are known (tests/bigram.py): streaming, stops, seeds, usage, JSON mode, the
model list and /api/show as Ollama clients read them, sampling defaults from the GGUF."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("sentencepiece")
openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")
pytest.importorskip("fastapi")

import bigram  # noqa: E402
from server_util import TEMPLATE, Server, scripted_gguf, sky_gguf, sp  # noqa: E402,F401

from runtime.server import ServerConfig  # noqa: E402

SKY_SAMPLING = {"temperature": 0.0, "top_p": 0.8, "top_k": 7, "repeat_penalty": 1.1}
JSON_TEMPLATE = TEMPLATE.replace("assistant:", "answer")


@pytest.fixture(scope="module")
def models(tmp_path_factory, sp):
    mk = tmp_path_factory.mktemp
    sky, start, _ = sky_gguf(mk("sky"), sp, sampling=SKY_SAMPLING)
    loop = scripted_gguf(mk("loop"), [], cycle=[start] + bigram.text_chain(sp, "abc"))
    # says `{}y"` unconstrained: a JSON grammar must end it after `}`, or give `{` the keys a
    # schema asks for (every other token is a tie, so the grammar alone writes them)
    jstart = sp.encode("x | answer")[-1]
    js = scripted_gguf(mk("json"), [[jstart] + bigram.text_chain(sp, '{}y"')],
                       template=JSON_TEMPLATE)
    return {"sky": sky, "loop": loop, "json": js}


@pytest.fixture(scope="module")
def srv(models, tmp_path_factory):
    import os

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("KILN_HOME")
    os.environ["KILN_HOME"] = str(home)
    config = ServerConfig(n_ctx=256, max_loaded=3, threads=1)
    with Server(config) as s:
        for name, path in models.items():
            info = s.pool.add_given(str(path), path)
            s.pool._given[name] = info
            info.id = name
        yield s
    if old is None:
        os.environ.pop("KILN_HOME", None)
    else:
        os.environ["KILN_HOME"] = old


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# -- OpenAI ------------------------------------------------------------------------------------
def test_chat_completion(srv):
    client = srv.openai()
    r = client.chat.completions.create(model="sky", messages=user("what colour is the sky"))
    assert r.choices[0].message.content == "Sky blue"
    assert r.choices[0].finish_reason == "stop" and r.model == "sky"
    model = srv.loaded("sky")
    assert r.usage.prompt_tokens == len(model.prompt.encode(user("what colour is the sky")))
    assert r.usage.completion_tokens == len("Sky blue")   # one byte token per character
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_completion_stream_with_usage(srv):
    client = srv.openai()
    chunks = list(client.chat.completions.create(
        model="sky", messages=user("hi"), stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Sky blue"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "stop" and set(finals[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    plain = list(client.chat.completions.create(model="sky", messages=user("hi"), stream=True))
    assert all(c.usage is None for c in plain)


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_never_shown(srv, stream):
    client = srv.openai()
    # the loop model says abc:abc:...; "c:a" spans three tokens
    r = client.chat.completions.create(model="loop", messages=user("go"), stop=["zz", "c:a"],
                                       max_tokens=50, stream=stream)
    if stream:
        chunks = list(r)
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        text, finish = r.choices[0].message.content, r.choices[0].finish_reason
    assert text == "ab" and finish == "stop"
    one = client.chat.completions.create(model="sky", messages=user("hi"), stop="blue")
    assert one.choices[0].message.content == "Sky "


def test_max_tokens_and_max_completion_tokens(srv):
    client = srv.openai()
    r = client.chat.completions.create(model="loop", messages=user("go"), max_tokens=5)
    assert r.choices[0].message.content == "abc:a"
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    r = client.chat.completions.create(model="loop", messages=user("go"),
                                       max_completion_tokens=3)
    assert r.choices[0].message.content == "abc"


def test_seed_reproduces_the_answer(srv):
    client = srv.openai()

    def ask(seed):
        return client.chat.completions.create(model="sky", messages=user("hi"), seed=seed,
                                              temperature=3.0, top_p=1.0, max_tokens=12,
                                              extra_body={"top_k": 0}
                                              ).choices[0].message.content

    first = {seed: ask(seed) for seed in (1, 2, 3, 4, 5)}
    assert len(set(first.values())) >= 2, first        # the temperature really samples
    for seed, text in first.items():                    # and each seed gives its answer again
        assert ask(seed) == text, seed
    # Ollama's options.seed takes the same path
    o = srv.ollama()
    opts = {"seed": 7, "temperature": 3.0, "top_p": 1.0, "top_k": 0, "num_predict": 12}
    answers = {o.chat(model="sky", messages=user("hi"), options=opts).message.content
               for _ in range(3)}
    assert len(answers) == 1


def test_json_mode(srv):
    client = srv.openai()
    free = client.chat.completions.create(model="json", messages=user("x"))
    assert free.choices[0].message.content == '{}y"'   # what the script says unconstrained
    r = client.chat.completions.create(model="json", messages=user("x"),
                                       response_format={"type": "json_object"})
    assert json.loads(r.choices[0].message.content) == {}
    assert r.choices[0].finish_reason == "stop"
    for kind, typ in (("integer", int), ("string", str)):
        schema = {"type": "object", "properties": {"a": {"type": kind}}, "required": ["a"]}
        r = client.chat.completions.create(
            model="json", messages=user("x"), response_format={
                "type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        value = json.loads(r.choices[0].message.content)
        assert set(value) == {"a"} and isinstance(value["a"], typ), value
    o = srv.ollama()
    assert json.loads(o.chat(model="json", messages=user("x"), format="json").message.content
                      ) == {}
    value = json.loads(o.generate(model="json", prompt="x", format=schema).response)
    assert isinstance(value["a"], str)


def test_models_list_and_unknown_model(srv):
    client = srv.openai()
    ids = [m.id for m in client.models.list().data]
    assert {"sky", "loop", "json"} <= set(ids)
    assert client.models.retrieve("sky").id == "sky"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=user("hi"))
    assert err.value.code == "model_not_found" and "nope" in err.value.message
    with pytest.raises(ollama.ResponseError) as oerr:
        srv.ollama().chat(model="nope", messages=user("hi"))
    assert oerr.value.status_code == 404 and "nope" in oerr.value.error


def test_raw_completion_has_no_template(srv):
    client = srv.openai()
    # no template: the raw text's last token decides; "x assistant:" ends like the template
    r = client.completions.create(model="sky", prompt="x assistant:", max_tokens=20)
    assert r.choices[0].text == "Sky blue" and r.choices[0].finish_reason == "stop"
    model = srv.loaded("sky")
    assert model.last_prompt == "x assistant:"
    assert r.usage.prompt_tokens == len(model.prompt.tokenizer.encode("x assistant:", True)) + 1
    chunks = list(client.completions.create(model="sky", prompt="x assistant:", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Sky blue"
    default = client.completions.create(model="loop", prompt="x assistant:")
    assert default.usage.completion_tokens == 16          # OpenAI's default max_tokens here


def test_sampling_defaults_reach_llama_cpp(srv):
    """What llama.cpp's generate() is called with: the GGUF's defaults unless asked."""
    client = srv.openai()
    client.chat.completions.create(model="sky", messages=user("hi"))  # loaded
    llm = srv.loaded("sky").llm
    seen = []
    real = llm.generate

    def spy(tokens, **kw):
        seen.append(kw)
        return real(tokens, **kw)

    llm.generate = spy
    try:
        client.chat.completions.create(model="sky", messages=user("hi"))
        client.chat.completions.create(model="sky", messages=user("hi"), temperature=0.5,
                                       top_p=0.5, presence_penalty=0.25,
                                       frequency_penalty=0.5)
        srv.ollama().chat(model="sky", messages=user("hi"),
                          options={"top_k": 3, "repeat_penalty": 1.3})
    finally:
        del llm.generate
    d = SKY_SAMPLING
    assert (seen[0]["temp"], seen[0]["top_p"], seen[0]["top_k"], seen[0]["repeat_penalty"]) == \
        (d["temperature"], d["top_p"], d["top_k"], d["repeat_penalty"])
    assert seen[0]["presence_penalty"] == 0.0 and seen[0]["frequency_penalty"] == 0.0
    assert (seen[1]["temp"], seen[1]["top_p"], seen[1]["top_k"]) == (0.5, 0.5, d["top_k"])
    assert (seen[1]["presence_penalty"], seen[1]["frequency_penalty"]) == (0.25, 0.5)
    assert (seen[2]["top_k"], seen[2]["repeat_penalty"], seen[2]["temp"]) == (3, 1.3, 0.0)


def test_trimmed_turns_are_reported(srv):
    import httpx

    msgs = []
    for i in range(12):
        msgs += [{"role": "user", "content": f"question number {i} about things"},
                 {"role": "assistant", "content": f"answer number {i}"}]
    msgs += user("the current question")
    r = httpx.post(srv.url + "/v1/chat/completions",
                   json={"model": "sky", "messages": msgs, "max_tokens": 16}, timeout=60)
    assert r.status_code == 200, r.text
    trimmed = int(r.headers["x-kiln-trimmed-messages"])
    assert trimmed >= 2 and r.json()["kiln"]["trimmed_messages"] == trimmed
    assert r.json()["choices"][0]["message"]["content"] == "Sky blue"


# -- Ollama ------------------------------------------------------------------------------------
def test_ollama_chat_and_generate(srv):
    o = srv.ollama()
    r = o.chat(model="sky", messages=user("hi"), stream=False)
    assert r.message.content == "Sky blue" and r.done and r.done_reason == "stop"
    assert r.eval_count == 8 and r.prompt_eval_count > 0
    assert r.total_duration > 0 and r.eval_duration > 0 and r.prompt_eval_duration >= 0
    parts = list(o.chat(model="sky:latest", messages=user("hi"), stream=True))
    assert "".join(p.message.content for p in parts) == "Sky blue"
    assert parts[-1].done and not any(p.done for p in parts[:-1]) and len(parts) > 2
    g = o.generate(model="sky", prompt="what colour", stream=False)
    assert g.response == "Sky blue" and g.done_reason == "stop"
    model = srv.loaded("sky")
    assert model.last_prompt == model.prompt.render(user("what colour"))
    g = o.generate(model="sky", prompt="why", system="be brief")
    assert "system: be brief" in model.last_prompt
    raw = "".join(p.response for p in o.generate(model="sky", prompt="x assistant:", raw=True,
                                                 stream=True))
    assert raw == "Sky blue" and model.last_prompt == "x assistant:"
    r = o.chat(model="loop", messages=user("go"), options={"num_predict": 4, "stop": ["zz"]})
    assert r.message.content == "abc:" and r.done_reason == "length"


def test_ollama_tags_show_ps_version(srv):
    o = srv.ollama()
    o.chat(model="sky", messages=user("hi"))
    tags = {m.model: m for m in o.list().models}
    assert {"sky", "loop", "json"} <= set(tags)
    sky = tags["sky"]
    assert sky.size > 0 and sky.details.format == "gguf" and sky.details.family == "llama"
    assert sky.details.quantization_level == "F32" and sky.modified_at is not None
    show = o.show("sky")
    assert show.template == TEMPLATE and "completion" in show.capabilities
    assert show.modelinfo["llama.context_length"] == 256
    assert show.modelinfo["general.architecture"] == "llama"
    assert "num_ctx" in show.parameters and 'stop                           "USER:"' in \
        show.parameters
    assert "temperature" in show.parameters and "top_k" in show.parameters
    assert show.details.parameter_size.endswith("K")
    ps = {m.model: m for m in o.ps().models}
    assert "sky" in ps and ps["sky"].expires_at is not None and ps["sky"].size > 0
    import httpx

    assert httpx.get(srv.url + "/api/version").json()["version"]
    assert httpx.get(srv.url + "/").text == "Ollama is running"
    assert httpx.head(srv.url + "/").status_code == 200
