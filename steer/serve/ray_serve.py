"""The router and its experts as a Ray Serve application: the only module that imports Ray Serve.

One deployment per expert (it loads the expert once, holds the policy's vector and reward files, and decodes
the requests that arrive together as one batch, each row with its own strengths and settings) and an ingress
deployment that reads requests with the router's reader, decides, applies what the policy allows and returns
an OpenAI-style chat completion (or its stream of chunks) with the decision trace. An expert replica takes
`max_batch_size` requests at once; past `max_queued_requests` waiting a request is refused (HTTP 503).
"""


import asyncio
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from experts.errors import SteerlabError
from steer.guard import FEATURE
from steer.serve.metrics import CLIENT_CLOSED

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from ray import serve
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError:
    raise SteerlabError("steer serve needs the optional Ray extra; install it with: pip install 'steerlab[ray]'") from None

APP = "steerlab"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _unpack(files: dict[str, bytes]) -> Path:
    """A replica's own copy of a folder's files (replicas may run on other machines)."""
    folder = Path(tempfile.mkdtemp(prefix="steerlab-serve-"))
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def _pack(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class _Asked:
    """One request at an expert replica: its job, the queue its deltas go to, when it arrived and when (if) its
    caller left."""

    def __init__(self, job: dict, loop: asyncio.AbstractEventLoop) -> None:
        self.job, self.loop, self.out = job, loop, asyncio.Queue()
        self.arrived, self.gone_at = time.perf_counter(), None
        self.queued_s = 0.0

    def send(self, delta: Any) -> None:
        """From the decoding thread: a `Delta` (then None after the last), or an exception for this request."""
        if isinstance(delta, BaseException):
            self.loop.call_soon_threadsafe(self.out.put_nowait, delta)
            return
        self.loop.call_soon_threadsafe(self.out.put_nowait, {**asdict(delta), "queued_s": self.queued_s})
        if delta.finish_reason is not None:
            self.loop.call_soon_threadsafe(self.out.put_nowait, None)


@serve.deployment
class ExpertService:
    """One expert, decoding with continuous batching (`steer.serve.running`): a request joins the running batch at
    the next token boundary (up to `max_batch_size` rows; an idle replica waits `batch_wait_s` after the first
    arrival for more), with its own strengths and settings, streams its answer, and leaves when it finishes or
    its caller goes (its row is freed before the next token). A request whose reward follows the text in a reward
    expert of its own waits for the running rows to end and is answered in a batch of its own (`answer_rows`)."""

    def __init__(self, name: str, fingerprint: str | None, rules: list[dict], files: dict[str, bytes], threads: int,
                 top_k: int, max_batch_size: int, batch_wait_s: float) -> None:
        import torch

        from experts.expert import Expert
        from steer.router.router import Rule

        torch.set_num_threads(threads)
        self.expert = Expert.load(name)
        if fingerprint and self.expert.fingerprint != fingerprint:
            raise SteerlabError(f"{name!r} here has weights {self.expert.fingerprint}; the router was trained with {fingerprint}")
        self.rules, self.folder, self.top_k = [Rule(**r) for r in rules], _unpack(files), top_k
        self.loaded: dict[str, Any] = {}  # vectors and rewards, read on first use
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_s
        self.waiting: asyncio.Queue | None = None  # the `_Asked` not yet in the running batch
        self.batcher: asyncio.Task | None = None
        self.freed_s: deque[float] = deque(maxlen=1000)  # for the last callers who left: seconds until their row left
        self.step_s: deque[float] = deque(maxlen=1000)  # the last decode steps' seconds

    async def ready(self) -> str:
        """Answers once this replica has loaded its expert (a replica takes calls only after its constructor)."""
        return self.expert.fingerprint

    async def stats(self) -> dict:
        """How fast rows whose callers left were freed, against a decode step's time (for the load test)."""
        import numpy as np

        return {"freed_s": list(self.freed_s), "step_s_median": float(np.median(self.step_s)) if self.step_s else None,
                "steps": len(self.step_s)}

    async def answer(self, job: dict) -> AsyncIterator[dict]:
        """Stream one request's answer: a `Delta` (as a dict) per decoding step, the last with its finish reason."""
        if self.batcher is None:
            self.waiting = asyncio.Queue()
            self.batcher = asyncio.create_task(self._decode())
        asked = _Asked(job, asyncio.get_running_loop())
        self.waiting.put_nowait(asked)
        finished = False
        try:
            while (delta := await asked.out.get()) is not None:
                if isinstance(delta, BaseException):
                    raise delta
                yield delta
            finished = True
        finally:  # the caller cancelled (its client left or timed out): its row leaves before the next token
            if not finished:
                asked.gone_at = time.perf_counter()

    async def _arrivals(self, idle: bool, room: int) -> list[_Asked]:
        """The requests waiting now (at most `room`); when `idle`, wait for the first and `batch_wait_s` for more."""
        loop, arrivals = asyncio.get_running_loop(), []
        if idle:
            arrivals.append(await self.waiting.get())
        deadline = loop.time() + (self.batch_wait_s if idle else 0.0)
        while len(arrivals) < room:
            if not self.waiting.empty():
                arrivals.append(self.waiting.get_nowait())
                continue
            if loop.time() >= deadline:
                break
            try:
                arrivals.append(await asyncio.wait_for(self.waiting.get(), deadline - loop.time()))
            except TimeoutError:
                break
        return arrivals

    def _joining(self, asked: _Asked):
        """The request as a row of the running batch."""
        from experts.generate import GenerationSettings
        from steer.router.decision import Adjustment
        from steer.serve.batch import RowRequest
        from steer.serve.running import Joining

        job = asked.job
        prompt = job["messages"][-1]["content"] if job["raw"] else self.expert.format_conversation(job["messages"])
        request = RowRequest(prompt, tuple(Adjustment(**a) for a in job["adjustments"]),
                             GenerationSettings(**job["settings"]), tuple(job["stops"]), job["top_logprobs"])

        def left() -> None:
            self.freed_s.append(time.perf_counter() - asked.gone_at)

        return Joining(request, asked.send, lambda: asked.gone_at is not None, left)

    async def _decode(self) -> None:
        """Join the waiting requests at each token boundary, take one step, repeat."""
        from steer.serve.batch import answer_rows
        from steer.serve.running import RunningBatch

        running = RunningBatch(self.expert, self.rules, self.folder, top_k=self.top_k, loaded=self.loaded)
        own: list = []  # (asked, joining) waiting for a batch of their own; nothing joins meanwhile
        while True:
            arrivals = [] if own else await self._arrivals(not len(running), self.max_batch_size - len(running))
            joinings = []
            for asked in arrivals:
                asked.queued_s = time.perf_counter() - asked.arrived
                try:
                    joinings.append((asked, self._joining(asked)))
                except Exception as error:  # this request alone is malformed
                    asked.out.put_nowait(error)
            if joinings:
                try:
                    refused = await asyncio.to_thread(running.join, [j for _, j in joinings])
                    own += [(a, j) for a, j in joinings if j in refused]
                except Exception as error:  # these requests fail; the running rows go on
                    for asked, _ in joinings:
                        asked.out.put_nowait(error)
            if own and not len(running):
                batch, own = own, []
                try:
                    await asyncio.to_thread(answer_rows, self.expert, [j.request for _, j in batch], self.rules,
                                            self.folder, top_k=self.top_k, loaded=self.loaded,
                                            emit=lambda deltas: [j.emit(d) for (_, j), d in zip(batch, deltas)
                                                                 if d is not None],
                                            cancelled=lambda row: batch[row][1].cancelled())
                except Exception as error:
                    for asked, _ in batch:
                        asked.out.put_nowait(error)
            elif len(running):
                started = time.perf_counter()
                try:
                    await asyncio.to_thread(running.step)
                except Exception as error:  # every running request gets it; the batch starts again empty
                    for row in running.rows:
                        row.joining.emit(error)
                    running.close()
                    running = RunningBatch(self.expert, self.rules, self.folder, top_k=self.top_k, loaded=self.loaded)
                self.step_s.append(time.perf_counter() - started)


app = FastAPI(title="steerlab router", description="OpenAI-style chat completions, routed by activation features")


def _error(status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    from steer.serve.service import error_body

    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


RETRY_AFTER_S = 2  # what a 503 tells a client to wait before trying again
PROXY_MARGIN_S = 10  # Ray's HTTP proxy times out this much later than the service, so that the 408 is the service's


@app.exception_handler(StarletteHTTPException)
async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:  # 404s, 405s... in OpenAI's shape
    return _error(error.status_code, str(error.detail), headers=getattr(error, "headers", None))


@app.exception_handler(Exception)
async def _unexpected(request: Request, error: Exception) -> JSONResponse:  # never a bare 500: OpenAI's shape
    return _error(500, f"internal error ({type(error).__name__}); the request was not completed")


class _Turn:
    """One answered request: the expert's deltas as a completion, or as server-sent events (OpenAI's chunks,
    the `steerlab` trace in the first); either way it is logged and counted once it ends."""

    def __init__(self, service: "RouterService", chat, decision, adjustments, rerouted: str | None, start: float,
                 decided: float, deadline: float, deltas) -> None:
        from steer.serve.service import trace

        self.service, self.chat, self.decision, self.adjustments = service, chat, decision, adjustments
        self.start, self.decided, self.deadline, self.deltas = start, decided, deadline, deltas
        self.trace = trace(chat, decision, adjustments, {"decide": 1000 * (decided - start)})
        if rerouted:
            self.trace["rerouted_from"] = rerouted

    async def _all(self, first: dict) -> AsyncIterator[dict]:
        """The expert's deltas; TimeoutError past the request's deadline (the expert's row is then cancelled)."""
        self.service.metrics.first_token(self.decision.expert, time.perf_counter() - self.start, first.get("queued_s", 0.0))
        yield first
        while True:
            try:
                delta = await asyncio.wait_for(self.deltas.__anext__(), max(0.0, self.deadline - time.perf_counter()))
            except StopAsyncIteration:
                return
            except TimeoutError:
                self.deltas.cancel()
                raise
            yield delta

    def abandoned(self) -> None:
        """The client left (or the server cancelled the request): stop the expert's row, count it."""
        self.deltas.cancel()
        self.service.metrics.unanswered(CLIENT_CLOSED)

    def _timings(self) -> float:
        """Record the answer's time in the trace; returns the request's whole time in seconds."""
        now = time.perf_counter()
        self.trace["timings_ms"]["answer"] = 1000 * (now - self.decided)
        return now - self.start

    async def completion(self, first: dict) -> dict:
        from steer.serve.service import completion

        text, logprobs, last = "", [], first
        try:
            async for delta in self._all(first):
                text, logprobs, last = text + delta["text"], logprobs + delta["logprobs"], delta
        except asyncio.CancelledError:
            self.abandoned()
            raise
        seconds = self._timings()
        response = completion(self.chat, self.decision, self.adjustments, {**last, "text": text, "logprobs": logprobs},
                              self.trace["timings_ms"])
        response["steerlab"] = self.trace
        await self._done(response, seconds, last)
        return response

    async def events(self, first: dict) -> AsyncIterator[str]:
        import json
        import uuid

        from steer.serve.service import chunk, finish_reason, usage

        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.decision.expert}

        def send(payload: dict) -> str:
            return f"data: {json.dumps(payload)}\n\n"

        yield send(chunk(head, {"role": "assistant", "content": ""}, request=self.chat, extra={"steerlab": self.trace}))
        text, last = "", first
        try:
            async for delta in self._all(first):
                text, last = text + delta["text"], delta
                if delta["text"] or delta["logprobs"] or delta["finish_reason"]:
                    yield send(chunk(head, {"content": delta["text"]} if delta["text"] else {}, request=self.chat,
                                     finish=delta["finish_reason"], logprobs=delta["logprobs"]))
        except (asyncio.CancelledError, GeneratorExit):  # the client left: nobody reads what follows
            self.abandoned()
            raise
        except Exception as error:  # the headers are sent: the error goes in the stream, in OpenAI's shape, then [DONE]
            from steer.serve.service import error_body

            timeout = isinstance(error, TimeoutError)
            self.service.metrics.unanswered(408 if timeout else 500)
            message = (f"the request ran past its {self.service.timeout_s:g} s limit; the answer was cut short" if timeout
                       else f"internal error ({type(error).__name__}); the answer was cut short")
            yield send(error_body(408 if timeout else 500, message))
            yield "data: [DONE]\n\n"
            return
        if self.chat.include_usage:
            yield send({**head, "object": "chat.completion.chunk", "choices": [],
                        "usage": usage(last["prompt_tokens"], last["completion_tokens"])})
        yield "data: [DONE]\n\n"
        seconds = self._timings()
        await self._done({**head, "steerlab": self.trace, "usage": usage(last["prompt_tokens"], last["completion_tokens"]),
                          "choices": [{"finish_reason": finish_reason(last["finish_reason"])}], "stream": True},
                         seconds, last)

    async def _done(self, response: dict, seconds: float, last: dict) -> None:
        self.service.metrics.answered(self.decision.expert, seconds, last["completion_tokens"], last["batch_size"],
                                      self.chat.stream, time.perf_counter() - self.decided)
        await self.service.write_log(response)


@serve.deployment
@serve.ingress(app)
class RouterService:
    """The HTTP ingress: read (requests that arrive together are read in one batch), decide, adjust within the
    policy, stream the chosen expert's answer back (or assemble it), log the decision, count it in /metrics."""

    def __init__(self, router_files: dict[str, bytes], experts: dict[str, Any], limits: dict, threads: int,
                 api_key: str | None = None, log: str | None = None, timeout_s: float = 120.0,
                 max_requests: int = 96) -> None:
        import torch

        from experts.expert import Expert
        from steer.router.router import Router
        from steer.serve.metrics import ServiceMetrics
        from steer.serve.service import Limits

        torch.set_num_threads(threads)
        self.router = Router.load(_unpack(router_files))
        self.reader = Expert.load(self.router.features.reader)
        self.router.check_reader(self.reader)
        self.experts = {name: handle.options(stream=True) for name, handle in experts.items()}
        self.limits, self.api_key, self.log = Limits(**limits), api_key, log
        self.log_lock = asyncio.Lock()
        self.metrics = ServiceMetrics()
        self.timeout_s, self.max_requests, self.in_flight = timeout_s, max_requests, 0

    def _denied(self, request: Request) -> JSONResponse | None:
        """401 unless the request carries the API key (when the service has one)."""
        import hmac

        if self.api_key is None:
            return None
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if hmac.compare_digest(given.encode(), self.api_key.encode()):
            return None
        return _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                      headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    async def health(self) -> dict:
        """Liveness: the ingress runs (it says nothing of the experts; see /ready)."""
        return {"status": "ok", "experts": sorted(self.experts), "reader": self.reader.name}

    @app.get("/ready")
    async def ready(self, request: Request) -> JSONResponse:
        """Ready only when every deployed expert has loaded: 200, else 503 naming those still loading."""
        if denied := self._denied(request):
            return denied
        waiting = []
        for name, handle in self.experts.items():
            try:
                await asyncio.wait_for(handle.options(stream=False).ready.remote(), timeout=1.0)
            except Exception:  # still starting (or gone): not ready
                waiting.append(name)
        if waiting:
            return _error(503, f"experts still loading: {', '.join(sorted(waiting))}",
                          headers={"Retry-After": str(RETRY_AFTER_S)})
        return JSONResponse({"status": "ready", "experts": sorted(self.experts)})

    @app.get("/metrics")
    async def metrics(self, request: Request) -> Response:
        """Requests, latencies, tokens and batch sizes in Prometheus' text format."""
        if denied := self._denied(request):
            return denied
        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)

    def _models(self) -> dict[str, dict]:
        """The router (it picks the expert) and each deployed expert (a request naming one pins it)."""
        from steer.serve.service import MODEL, allowed_strengths

        router = {"id": MODEL, "object": "model", "created": 0, "owned_by": "steerlab", "experts": sorted(self.experts),
                  "fallback": self.router.fallback, "request_strengths": allowed_strengths(self.router)}
        return {MODEL: router} | {name: {"id": name, "object": "model", "created": 0, "owned_by": "steerlab",
                                         "pinned": True} for name in sorted(self.experts)}

    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        return self._denied(request) or JSONResponse({"object": "list", "data": list(self._models().values())})

    @app.get("/v1/models/{model_id}")
    async def model(self, model_id: str, request: Request) -> JSONResponse:
        if denied := self._denied(request):
            return denied
        models = self._models()
        if model_id not in models:
            return _error(404, f"unknown model {model_id!r}; this service serves {', '.join(models)}", "model")
        return JSONResponse(models[model_id])

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _decide(self, requests: list[tuple[str, str | None]]) -> list:
        prompts, pinned = [p for p, _ in requests], [e for _, e in requests]
        return await asyncio.to_thread(self.router.decide, self.reader, prompts, pinned)

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self._serve(request, raw=False)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        """A raw continuation of `prompt` (no chat template): what a base expert is for."""
        return await self._serve(request, raw=True)

    async def _serve(self, request: Request, raw: bool) -> Response:
        """Admit (503 past `max_requests` in flight), parse, decide, adjust, answer: every refusal in OpenAI's shape;
        408 past the request's time limit; a request whose client leaves stops its expert's row."""
        if denied := self._denied(request):
            return denied
        if self.in_flight >= self.max_requests:
            return self._refused(503, f"the service has {self.in_flight} requests in flight (its limit); retry in "
                                 f"{RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
        self.in_flight += 1
        try:
            return await self._answer(request, raw)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: Request, raw: bool) -> Response:
        from ray.serve.exceptions import BackPressureError, RayServeException

        from steer.serve.service import BadRequest, ChatRequest, adjustments_for, to_deployed

        start = time.perf_counter()
        deadline = start + self.timeout_s
        try:
            body = await request.json()
        except ValueError:
            return self._refused(400, "the body is not JSON")
        deltas = turn = None
        try:
            parse = ChatRequest.parse_completion if raw else ChatRequest.parse
            chat = parse(body, self.limits, models=self.experts)
            decision = await asyncio.wait_for(self._decide((chat.prompt, chat.pinned)), self.timeout_s)
            decided = time.perf_counter()
            decision, rerouted = to_deployed(self.router, decision, self.experts)
            adjustments = adjustments_for(self.router, decision, chat)
            job = {"messages": list(chat.messages), "raw": chat.raw, "adjustments": [asdict(a) for a in adjustments],
                   "settings": chat.generation_settings(), "stops": chat.stop, "top_logprobs": chat.top_logprobs}
            deltas = self.experts[decision.expert].answer.remote(job)
            # the expert took the request (or its queue refused it)
            first = await asyncio.wait_for(deltas.__anext__(), max(0.0, deadline - time.perf_counter()))
            turn = _Turn(self, chat, decision, adjustments, rerouted, start, decided, deadline, deltas)
            if chat.stream:
                return StreamingResponse(turn.events(first), media_type="text/event-stream")
            return JSONResponse(await turn.completion(first))
        except BadRequest as error:
            return self._refused(error.status, str(error), error.param)
        except asyncio.CancelledError:  # the client left before its answer began (after, the turn counts it)
            if turn is None:
                if deltas is not None:
                    deltas.cancel()
                self.metrics.unanswered(CLIENT_CLOSED)
            raise
        except TimeoutError:
            if deltas is not None:
                deltas.cancel()
            return self._refused(408, f"the request ran past its {self.timeout_s:g} s limit (steer serve "
                                 "--request-timeout); nothing was returned")
        except BackPressureError:
            return self._refused(503, f"the expert's queue is full; retry in {RETRY_AFTER_S} s",
                                 headers={"Retry-After": str(RETRY_AFTER_S)})
        except RayServeException as error:  # a replica gone or not yet up: a retryable 503, in OpenAI's shape
            return self._refused(503, f"the expert is unavailable ({type(error).__name__}); retry in {RETRY_AFTER_S} s",
                                 headers={"Retry-After": str(RETRY_AFTER_S)})

    def _refused(self, status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
        self.metrics.unanswered(status)
        return _error(status, message, param, headers)

    async def write_log(self, response: dict) -> None:
        """One JSONL line per answered request: its id, the decision, what was applied, timings."""
        from experts.files import append_jsonl

        if not self.log:
            return
        row = {"id": response["id"], "created": response["created"], "model": response["model"],
               **{k: response["steerlab"][k] for k in ("decision", "applied", "settings", "timings_ms")},
               "rerouted_from": response["steerlab"].get("rerouted_from"),
               "usage": response["usage"], "finish_reason": response["choices"][0]["finish_reason"],
               "stream": response.get("stream", False),
               "guarded": any(a["because"] == FEATURE for a in response["steerlab"]["applied"])}
        async with self.log_lock:
            await asyncio.to_thread(append_jsonl, self.log, [row])


@dataclass(frozen=True)
class ServeSettings:
    """How the service runs: where it listens and how much work it takes at once."""

    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1  # per expert
    max_batch_size: int = 8  # rows an expert replica decodes together (its concurrency); 1: one at a time
    batch_wait_s: float = 0.02  # how long an idle replica waits after a first request for more
    max_ongoing_requests: int = 64  # requests in flight per router replica
    max_queued_requests: int = 32  # per deployment; past this a request gets HTTP 503
    cpus_per_replica: float = 0.5
    threads_per_replica: int | None = None  # torch threads of each replica (default: its whole CPUs, at least 1)
    gpus_per_replica: float = 0.0  # e.g. 0.25: four small experts share a GPU (Expert.load then picks CUDA)
    request_timeout_s: float = 120.0
    top_k: int = 20  # reward-augmented decoding's candidates
    max_tokens: int = 256
    max_prompt_chars: int = 8000
    api_key: str | None = None  # required on every route but /health when set; without one, loopback only
    log: str | None = None  # JSONL audit log: one line per served request

    def __post_init__(self) -> None:
        if self.api_key is None and self.host not in LOOPBACK:
            raise SteerlabError(f"--host {self.host} exposes the service beyond this machine: set an API key "
                                "(--api-key or STEERLAB_API_KEY), or bind to 127.0.0.1")
        if self.api_key is not None and not self.api_key.strip():
            raise SteerlabError("the API key is empty")
        if self.threads_per_replica is not None and self.threads_per_replica < 1:
            raise SteerlabError(f"threads-per-replica must be at least 1, got {self.threads_per_replica}")
        for name in ("replicas", "max_batch_size", "max_ongoing_requests", "max_queued_requests"):
            if getattr(self, name) < 1:
                raise SteerlabError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.cpus_per_replica <= 0 or self.request_timeout_s <= 0 or self.gpus_per_replica < 0 or self.batch_wait_s < 0:
            raise SteerlabError("cpus-per-replica and request-timeout must be positive, gpus-per-replica and batch-wait "
                                "at least 0")


def serve_router(router_folder: str | Path, experts: list[str] | None = None, settings: ServeSettings = ServeSettings(),
                 address: str | None = None) -> str:
    """Deploy the router and its experts (default: all the router routes to); returns the base URL."""
    import ray

    from steer.router.router import Router

    router = Router.load(router_folder)
    experts = experts or list(router.experts)
    unknown = [e for e in experts if e not in router.experts]
    if unknown:
        raise SteerlabError(f"the router does not route to {', '.join(unknown)}; it routes to {', '.join(router.experts)}")
    if router.fallback not in experts:
        raise SteerlabError(f"deploy the router's fallback expert {router.fallback!r} too (decisions for experts not "
                            "deployed go to it)")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": settings.host, "port": settings.port,
                              "request_timeout_s": settings.request_timeout_s + PROXY_MARGIN_S})
    threads = settings.threads_per_replica or max(1, int(settings.cpus_per_replica))
    options = dict(num_replicas=settings.replicas, max_queued_requests=settings.max_queued_requests,
                   ray_actor_options={"num_cpus": settings.cpus_per_replica, "num_gpus": settings.gpus_per_replica})
    policy_files = {r.file: (router.folder / r.file).read_bytes() for r in router.rules}
    rules = [asdict(r) for r in router.rules]
    handles = {name: ExpertService.options(name=f"expert:{name}", max_ongoing_requests=settings.max_batch_size, **options)
               .bind(name, router.fingerprints.get(name), rules, policy_files, threads, settings.top_k,
                     settings.max_batch_size, settings.batch_wait_s) for name in experts}
    limits = {"max_tokens": settings.max_tokens, "max_prompt_chars": settings.max_prompt_chars}
    # the ingress refuses past max_ongoing_requests itself (a 503 in OpenAI's shape): Ray's own limit sits above it
    # and its queue is unbounded, so that Ray's proxy never answers a plain-text 503
    ingress_options = {**options, "max_queued_requests": -1}
    ingress = RouterService.options(name="router", max_ongoing_requests=settings.max_ongoing_requests
                                    + settings.max_queued_requests, **ingress_options).bind(
        _pack(Path(router_folder)), handles, limits, threads, settings.api_key, settings.log,
        settings.request_timeout_s, settings.max_ongoing_requests)
    serve.run(ingress, name=APP, route_prefix="/", blocking=False)
    return f"http://{settings.host}:{settings.port}"


def shutdown() -> None:
    serve.delete(APP)
