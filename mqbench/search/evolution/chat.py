"""LLM chat backends behind one small interface (`Chat`), the answer cache, answer parsing.

A chat backend turns chat messages into `n` completions (`Completion`: text plus token and
cost accounting); the LLM candidate generator (generator_llm.py) asks one for answers.
`OpenAIChat` talks to any OpenAI-compatible chat endpoint (hosted, or a local vLLM /
Ollama / llama.cpp server) through the `openai` client (chat_hf.py: a local model). It
retries transient failures (connection resets, 429, 5xx) with exponential backoff, turns
permanent ones (unreachable host, bad key, unknown model) into one-line errors, and caches
every answer on disk keyed by (model, messages, temperature, seed, index), so a resumed
run never pays twice for the same prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from mqbench.errors import MqbenchError, require


@dataclass(frozen=True)
class Completion:
    text: str  # raw answer: reasoning, then a ```python code block```
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False


_CODE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract(text: str) -> tuple[str, str] | None:
    """(reasoning, code) from an answer: the last fenced code block; None if there is none."""
    blocks = _CODE.findall(text or "")
    if not blocks or not blocks[-1].strip():
        return None
    code = blocks[-1]
    reasoning = text[:text.rfind("```", 0, text.rfind(code))].strip()
    return reasoning, code.strip() + "\n"


@dataclass
class Usage:
    requests: int = 0
    cached: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class Chat(Protocol):
    """Chat messages in, `n` seeded completions out; usage is counted as it goes."""

    name: str  # the generator's name: "openai", "hf"
    label: str  # e.g. "openai, model gpt-4o-mini" (the discovered file's header)
    usage: Usage

    def complete(self, messages: list[dict], n: int, *, temperature: float,
                 seed: int) -> list[Completion]: ...


def cached(cache_dir, key: str, usage: Usage, produce) -> Completion:
    """The answer stored under `key` in cache_dir, or produce() it and store it atomically."""
    path = Path(cache_dir) / f"{key}.json" if cache_dir else None
    if path is not None and path.exists():
        usage.cached += 1
        return Completion(**{**json.loads(path.read_text()), "cached": True})
    out = produce()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(out)))
        os.replace(tmp, path)
    return out


@dataclass
class OpenAIChat:
    """Chat completions from an OpenAI-compatible endpoint, with retries and a disk cache.

    base_url/model/api_key default to $OPENAI_BASE_URL / $MQBENCH_LLM_MODEL / $OPENAI_API_KEY.
    Prices are USD per million tokens (0 for local servers).
    """

    model: str = ""
    base_url: str = ""
    api_key: str = ""
    cache_dir: Path | None = None
    max_retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 120.0
    price_in: float = 0.0
    price_out: float = 0.0
    usage: Usage = field(default_factory=Usage)
    name: str = "openai"

    @property
    def label(self) -> str:
        return f"openai, model {self.model}"

    def __post_init__(self):
        self.model = self.model or os.environ.get("MQBENCH_LLM_MODEL", "")
        self.base_url = self.base_url or os.environ.get("OPENAI_BASE_URL", "")
        self.api_key = self.api_key or os.environ.get("OPENAI_API_KEY", "") or "none"
        if not self.model:
            raise MqbenchError("no LLM model given: pass --model or set MQBENCH_LLM_MODEL")
        require("openai", "discover", "the openai generator")
        import openai  # lazy: optional and heavy, needed only by this generator

        # Retries are ours (counted, tested); the client's own would hide them.
        self._client = openai.OpenAI(base_url=self.base_url or None, api_key=self.api_key,
                                     max_retries=0, timeout=self.timeout_s)

    def _key(self, messages, temperature, seed, i) -> str:
        blob = json.dumps([self.model, messages, temperature, seed, i], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def complete(self, messages: list[dict], n: int, *, temperature: float,
                 seed: int) -> list[Completion]:
        return [self._one(messages, temperature, seed, i) for i in range(n)]

    def _one(self, messages, temperature, seed, i) -> Completion:
        return cached(self.cache_dir, self._key(messages, temperature, seed, i), self.usage,
                      lambda: self._request(messages, temperature, seed + i))

    def _request(self, messages, temperature, seed) -> Completion:
        import openai  # lazy: optional and heavy, needed only by this generator

        where = self.base_url or "api.openai.com"
        for attempt in range(self.max_retries + 1):
            try:
                resp = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature, seed=seed)
                break
            except openai.AuthenticationError:
                raise MqbenchError(f"the LLM endpoint {where} refused the API key (401); set "
                                   f"OPENAI_API_KEY or --api-key") from None
            except openai.NotFoundError:
                raise MqbenchError(f"model {self.model!r} not found at {where} (404); check "
                                   f"--model against the server's model list") from None
            except (openai.APIConnectionError, openai.RateLimitError,
                    openai.InternalServerError) as exc:
                if attempt == self.max_retries:
                    what = ("cannot reach" if isinstance(exc, openai.APIConnectionError)
                            else "keeps failing at")
                    raise MqbenchError(f"{what} the LLM endpoint {where} after "
                                       f"{self.max_retries + 1} tries ({type(exc).__name__}); "
                                       f"check --base-url and that the server runs") from None
                self.usage.retries += 1
                time.sleep(self.backoff_s * 2 ** attempt)
            except openai.APIStatusError as exc:
                raise MqbenchError(f"the LLM endpoint {where} answered HTTP "
                                   f"{exc.status_code}; check --base-url and --model") from None
        u = getattr(resp, "usage", None)
        pt, ct = (u.prompt_tokens, u.completion_tokens) if u else (0, 0)
        cost = (pt * self.price_in + ct * self.price_out) / 1e6
        self.usage.requests += 1
        self.usage.prompt_tokens += pt
        self.usage.completion_tokens += ct
        self.usage.cost_usd += cost
        text = (resp.choices[0].message.content or "") if resp.choices else ""
        return Completion(text, pt, ct, cost)
