"""The LLM path of `mqbench discover`: the OpenAI-compatible chat against a local replay
server, isolated scoring of hostile answers, duplicate screening, checkpoint/cache on resume,
the DPO scheduler."""

from __future__ import annotations

import json
import math
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from mqbench.errors import MqbenchError
from mqbench.search.evolution.chat import OpenAIChat, extract
from mqbench.search.evolution.fitness import context
from mqbench.search.evolution.generator_llm import PAIRS, LLMGenerator
from mqbench.search.evolution.loop import CANDIDATES, CHECKPOINT, DUPLICATE, Settings, run
from mqbench.search.evolution.scheduler import Scheduler
from mqbench.task.spec import load_task
from mqbench.testing import ANSWERS, GOOD, NO_CODE


class Replay:
    """A tiny OpenAI-compatible chat server replaying canned answers in order."""

    def __init__(self, answers, fail_first: int = 0):
        self.answers, self.i, self.requests, self.fail_first = list(answers), 0, 0, fail_first
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                replay.requests += 1
                if self.headers.get("Authorization") == "Bearer bad":
                    return self._send(401, {"error": {"message": "bad key"}})
                if body["model"] == "nope":
                    return self._send(404, {"error": {"message": "no such model"}})
                if replay.fail_first > 0:
                    replay.fail_first -= 1
                    return self._send(500, {"error": {"message": "busy"}})
                text = replay.answers[replay.i % len(replay.answers)]
                replay.i += 1
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0,
                                 "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant",
                                                          "content": text}}],
                                 "usage": {"prompt_tokens": 100, "completion_tokens": 50,
                                           "total_tokens": 150}})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def replay():
    r = Replay([a.replace("PORT", "0") for a in ANSWERS])
    r.answers = [a.replace("('127.0.0.1', 0)", f"('127.0.0.1', {r.port})") for a in r.answers]
    yield r
    r.server.shutdown()


MSG = [{"role": "user", "content": "hi"}]


def test_extract_reasoning_and_code():
    reasoning, code = extract(GOOD)
    assert reasoning == "Hessian trace per parameter, as HAWQ-V2."
    assert code.startswith("from mqbench.proxy import proxy") and code.endswith("]\n")
    assert extract(NO_CODE) is None and extract("```python\n```") is None


def test_generator_retries_accounts_and_caches(replay, tmp_path):
    replay.fail_first = 2
    gen = OpenAIChat(model="m", base_url=replay.url, cache_dir=tmp_path, backoff_s=0.01,
                          price_in=1.0, price_out=2.0)
    out = gen.complete(MSG, 2, temperature=0.5, seed=1)
    assert [c.text for c in out] == ANSWERS[:2] and not any(c.cached for c in out)
    assert gen.usage.retries == 2 and gen.usage.requests == 2 and replay.requests == 4
    assert gen.usage.prompt_tokens == 200 and gen.usage.completion_tokens == 100
    assert gen.usage.cost_usd == pytest.approx((200 * 1.0 + 100 * 2.0) / 1e6)
    again = OpenAIChat(model="m", base_url=replay.url, cache_dir=tmp_path)
    assert [c.text for c in again.complete(MSG, 2, temperature=0.5, seed=1)] == ANSWERS[:2]
    assert replay.requests == 4 and again.usage.cached == 2  # nothing paid twice


def test_generator_errors_are_one_line(replay):
    with pytest.raises(MqbenchError, match="refused the API key"):
        OpenAIChat(model="m", base_url=replay.url, api_key="bad").complete(
            MSG, 1, temperature=0, seed=0)
    with pytest.raises(MqbenchError, match="'nope' not found"):
        OpenAIChat(model="nope", base_url=replay.url).complete(MSG, 1, temperature=0,
                                                                   seed=0)
    dead = OpenAIChat(model="m", base_url="http://127.0.0.1:9/v1", max_retries=1,
                           backoff_s=0.01, timeout_s=2)
    with pytest.raises(MqbenchError, match="cannot reach the LLM endpoint"):
        dead.complete(MSG, 1, temperature=0, seed=0)
    with pytest.raises(MqbenchError, match="no LLM model"):
        OpenAIChat(base_url=replay.url)


def _llm_run(ctx, chat, workdir, generations, resume=False):
    s = Settings("tiny", generator="openai", generations=generations, population=8,
                 children=4, timeout=3.0)
    return run(ctx, LLMGenerator(chat, s, workdir), s, workdir, resume=resume, progress=False)


def test_llm_loop_end_to_end_with_hostile_answers(tiny_env, replay, tmp_path):
    ctx = context(load_task("tiny"), split="test")
    chat = OpenAIChat(model="m", base_url=replay.url, cache_dir=tmp_path / "cache")
    workdir = tmp_path / "run"
    first = _llm_run(ctx, chat, workdir, 0)  # the initial population
    log = [json.loads(line) for line in (workdir / CANDIDATES).read_text().splitlines()]
    why = [c["why"] for c in log]
    assert len(log) == 8 and sum(w == "" for w in why) == 2  # GOOD and GOOD2 only
    assert first.invalid == 6 and first.evaluated == 8
    assert sorted(m.order for m in first.members) == [1, 8]  # invalid answers are not kept
    assert any("time limit" in w for w in why)  # the infinite loop was killed
    assert any("NaN" in w for w in why) and "no code block" in why
    assert any("SyntaxError" in w for w in why)
    assert any("broke the sandbox: writing /tmp/mqbench_pwned" in w for w in why)
    assert any("broke the sandbox: network access" in w for w in why)
    assert not os.path.exists("/tmp/mqbench_pwned")  # the sandbox refused the write
    state = _llm_run(ctx, chat, workdir, 1, resume=True)
    assert state.evaluated == 8 + 4 and math.isfinite(state.history[-1]["best"])
    # The replay repeats GOOD in generation 1: same behaviour as a member, screened out.
    log = [json.loads(line) for line in (workdir / CANDIDATES).read_text().splitlines()]
    assert [c["why"] for c in log[8:]].count(DUPLICATE) == state.duplicates == 1
    assert sorted(m.order for m in state.members) == [1, 8]  # nothing better came
    assert all("stats.hessian_trace" in c["code"] for c in state.generator["library"])
    assert (workdir / CHECKPOINT).exists()
    pairs = [json.loads(line) for line in (workdir / PAIRS).read_text().splitlines()]
    assert pairs and pairs == state.generator["pairs"]
    for pair in pairs:
        assert set(pair) == {"prompt", "chosen", "rejected"}
        assert extract(pair["chosen"]) is not None  # the chosen answer always has code
    before = replay.requests
    resumed = _llm_run(ctx, chat, workdir, 1, resume=True)
    assert replay.requests == before and resumed.history == state.history
    more = _llm_run(ctx, OpenAIChat(model="m", base_url=replay.url,
                                    cache_dir=tmp_path / "cache"), workdir, 2, resume=True)
    assert more.generation == 2 and len(more.history) == 3
    assert [h["best"] for h in more.history] == sorted(h["best"] for h in more.history)
    (workdir / CHECKPOINT).write_text("{broken")
    with pytest.raises(MqbenchError, match="malformed checkpoint"):
        _llm_run(ctx, chat, workdir, 1, resume=True)


def test_no_answer_is_requested_where_the_sandbox_cannot_run(replay, tmp_path, monkeypatch):
    from mqbench.search.evolution import generator_llm

    def unavailable():
        raise MqbenchError("the proxy sandbox cannot run here: no namespaces")

    monkeypatch.setattr(generator_llm, "layers", unavailable)
    chat = OpenAIChat(model="m", base_url=replay.url, cache_dir=tmp_path / "cache")
    with pytest.raises(MqbenchError, match="cannot run here"):
        _llm_run(None, chat, tmp_path / "run", 1)  # fails before the context is needed
    assert replay.requests == 0 and chat.usage.requests == 0


def test_scheduler_dpo_prefers_the_fitter_template_and_keeps_its_floor():
    rng = np.random.default_rng(0)
    means = {"a": 0.8, "b": 0.5, "c": 0.5, "d": 0.4}
    sched = Scheduler(tuple(means), floor=0.05)
    fixed_gain, dpo_gain = [], []
    for _ in range(40):
        picks = [sched.sample(rng) for _ in range(8)]
        children = [(t, means[t] + 0.05 * rng.standard_normal()) for t in picks]
        dpo_gain.append(np.mean([f for _, f in children]))
        fixed = [list(means)[i] for i in rng.integers(4, size=8)]
        fixed_gain.append(np.mean([means[t] for t in fixed]))
        sched.update(children)
    p = sched.probs()
    assert p[0] > 0.6 and p.min() >= 0.05 - 1e-12 and p.sum() == pytest.approx(1.0)
    assert np.mean(dpo_gain[-20:]) > np.mean(fixed_gain[-20:]) + 0.05
    # a loss step goes the right way: the preferred template gains probability
    s2 = Scheduler(("x", "y"), floor=0.0 + 0.01)
    before = s2.probs()[0]
    s2.update([("x", 1.0), ("y", 0.0)])
    assert s2.probs()[0] > before


def test_discover_cli_with_the_openai_generator(tiny_env, replay, tmp_path, capsys):
    from mqbench.cli.main import main
    from mqbench.proxy.contract import load_proxy_file

    out = tmp_path / "llm_found.py"
    assert main(["discover", "--task", "tiny", "--generator", "openai", "--model", "m",
                 "--base-url", replay.url, "--api-key", "k", "--generations", "1",
                 "--population", "8", "--out", str(out), "--quiet", "--fitness-split",
                 "test"]) in (0, None)
    msg = capsys.readouterr().out
    assert "requests" in msg and "template probabilities" in msg
    p = load_proxy_file(out)
    assert p.name == "llm_found" and "generator: openai, model m" in out.read_text()
    assert main(["discover", "--task", "tiny", "--generator", "hf", "--out",
                 str(tmp_path / "x.py")]) == 2
    assert "'hf'" in capsys.readouterr().err
