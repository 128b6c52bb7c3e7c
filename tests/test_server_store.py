"""The store through Ollama's API: /api/pull runs kiln's pull (from a local imitation of the
Hugging Face hub) with NDJSON progress, the model is then listed, loaded, shown in /api/ps,
and /api/delete removes it. Driven by the official `ollama` client."""
from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("sentencepiece")
ollama = pytest.importorskip("ollama")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

import bigram  # noqa: E402
from convert.families.llama import LlamaFamily  # noqa: E402
from hub_imitation import HubImitation, files_from_dir, isolate_hf_env  # noqa: E402
from server_util import STOPS, TEMPLATE, Server  # noqa: E402

from runtime.server import ServerConfig  # noqa: E402

REPO = "acme/sky"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A hub with one scripted checkpoint; HF cache and kiln store in tmp; loopback only."""
    import sentencepiece as spm
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    from hf_models import make_spm_tokenizer

    make_spm_tokenizer(ckpt)
    sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    start = sp.encode("x assistant:")[-1]
    bigram.build(ckpt, [[start] + bigram.text_chain(sp, "Sky blue")])
    isolate_hf_env(monkeypatch, tmp_path / "hf")
    # the family knowledge the scripted model is converted with (as in test_runtime)
    monkeypatch.setattr(LlamaFamily, "chat_template", lambda self, vocab: TEMPLATE)
    monkeypatch.setattr(LlamaFamily, "stop_strings", lambda self: STOPS)
    monkeypatch.setattr(LlamaFamily, "sampling_defaults", lambda self: {"temperature": 0.0})
    h = HubImitation()
    h.add_repo(REPO, files_from_dir(ckpt))
    h.start()
    monkeypatch.setenv("HF_ENDPOINT", h.endpoint)
    yield h
    h.stop()


def test_pull_list_chat_ps_delete(hub, tmp_path):
    with Server(ServerConfig(n_ctx=256, threads=1, store_home=tmp_path / "kiln")) as srv:
        o = srv.ollama()
        assert o.list().models == []
        with pytest.raises(ollama.ResponseError) as err:
            o.chat(model="sky:f32", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 404

        events = list(o.pull(f"{REPO}:f32", stream=True))
        statuses = [e.status for e in events]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        assert any(s.startswith("download") for s in statuses)
        assert any(s.startswith("convert") for s in statuses)
        done = [e for e in events if e.total and e.completed == e.total]
        assert done, statuses                              # progress reaches its total
        assert "stored as sky:f32" in statuses

        assert [m.model for m in o.list().models] == ["sky:f32"]
        r = o.chat(model="sky:f32", messages=[{"role": "user", "content": "hi"}])
        assert r.message.content == "Sky blue"
        assert o.chat(model="sky", messages=[{"role": "user", "content": "hi"}]
                      ).message.content == "Sky blue"      # NAME alone: its only quant
        assert [m.model for m in o.ps().models] == ["sky:f32"]
        assert srv.openai().models.list().data[0].id == "sky:f32"

        again = o.pull(f"{REPO}:f32", stream=False)        # already there: nothing fetched
        assert again.status == "success"

        assert o.delete("sky:f32").status == "success"
        assert o.list().models == [] and o.ps().models == []
        with pytest.raises(ollama.ResponseError) as err:
            o.delete("sky:f32")
        assert err.value.status_code == 404
        with pytest.raises(ollama.ResponseError) as err:
            o.pull("not-a-repo")
        assert err.value.status_code == 404 and "repo id" in err.value.error
        r = httpx.post(srv.url + "/api/pull", json={"model": "acme/missing"}, timeout=60)
        lines = r.text.strip().splitlines()
        assert r.status_code == 200 and '"error"' in lines[-1]   # Ollama reports it in-stream
