"""The router and its experts as a Ray Serve application: the only module that imports Ray Serve.

One deployment per expert (it loads the expert once, holds the policy's vector and reward files and answers
one request at a time per replica, since steering hooks belong to one request) and an ingress deployment that
reads each request with the router's reader, decides, applies what the policy allows and returns an
OpenAI-style chat completion with the decision trace. Concurrency is bounded per deployment: at most
`max_ongoing_requests` per replica, and past `max_queued_requests` waiting a request is refused (HTTP 503).
"""


import asyncio
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from experts.errors import SteerlabError

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
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


@serve.deployment
class ExpertService:
    """One expert; `respond` generates with the adjustments the ingress chose."""

    def __init__(self, name: str, fingerprint: str | None, rules: list[dict], files: dict[str, bytes], threads: int,
                 top_k: int) -> None:
        import torch

        from experts.expert import Expert
        from steer.router.router import Rule

        torch.set_num_threads(threads)
        self.expert = Expert.load(name)
        if fingerprint and self.expert.fingerprint != fingerprint:
            raise SteerlabError(f"{name!r} here has weights {self.expert.fingerprint}; the router was trained with {fingerprint}")
        self.rules, self.folder, self.top_k = [Rule(**r) for r in rules], _unpack(files), top_k
        self.loaded: dict[str, Any] = {}  # vectors and rewards, read on first use
        self.lock = asyncio.Lock()

    async def ready(self) -> str:
        """Answers once this replica has loaded its expert (a replica takes calls only after its constructor)."""
        return self.expert.fingerprint

    async def respond(self, prompt: str, system: str | None, adjustments: list[dict], settings: dict,
                      stops: tuple[str, ...] = ()) -> dict[str, Any]:
        async with self.lock:  # steering hooks are per request: one request at a time on this replica's expert
            return await asyncio.to_thread(self._respond, prompt, system, adjustments, settings, stops)

    def _respond(self, prompt: str, system: str | None, adjustments: list[dict], settings: dict,
                 stops: tuple[str, ...]) -> dict[str, Any]:
        from experts.generate import GenerationSettings
        from steer.router.answer import generate_adjusted
        from steer.router.decision import Adjustment
        from steer.serve.service import cut_at_stop

        result = generate_adjusted(self.expert, [prompt], [Adjustment(**a) for a in adjustments], self.rules, self.folder,
                                   GenerationSettings(**settings), top_k=self.top_k, system=system, loaded=self.loaded)
        text, stopped = cut_at_stop(result.texts[0], stops)
        tokens = len(self.expert.tokenizer(text, add_special_tokens=False)["input_ids"]) if stopped else len(result.token_ids[0])
        return {"text": text, "finish_reason": "stop" if stopped else result.finish_reasons[0],
                "prompt_tokens": len(self.expert.encode(result.formatted_prompts[0])), "completion_tokens": tokens}


app = FastAPI(title="steerlab router", description="OpenAI-style chat completions, routed by activation features")


def _error(status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    from steer.serve.service import error_body

    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


RETRY_AFTER_S = 2  # what a 503 tells a client to wait before trying again


@app.exception_handler(StarletteHTTPException)
async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:  # 404s, 405s... in OpenAI's shape
    return _error(error.status_code, str(error.detail), headers=getattr(error, "headers", None))


@app.exception_handler(Exception)
async def _unexpected(request: Request, error: Exception) -> JSONResponse:  # never a bare 500: OpenAI's shape
    return _error(500, f"internal error ({type(error).__name__}); the request was not completed")


@serve.deployment
@serve.ingress(app)
class RouterService:
    """The HTTP ingress: read, decide, adjust within the policy, hand the request to the chosen expert."""

    def __init__(self, router_files: dict[str, bytes], experts: dict[str, Any], limits: dict, threads: int,
                 api_key: str | None = None, log: str | None = None) -> None:
        import torch

        from experts.expert import Expert
        from steer.router.router import Router
        from steer.serve.service import Limits

        torch.set_num_threads(threads)
        self.router = Router.load(_unpack(router_files))
        self.reader = Expert.load(self.router.features.reader)
        self.router.check_reader(self.reader)
        self.experts, self.limits = experts, Limits(**limits)
        self.api_key, self.log = api_key, log
        self.lock = asyncio.Lock()
        self.log_lock = asyncio.Lock()

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
                await asyncio.wait_for(handle.ready.remote(), timeout=1.0)
            except Exception:  # still starting (or gone): not ready
                waiting.append(name)
        if waiting:
            return _error(503, f"experts still loading: {', '.join(sorted(waiting))}",
                          headers={"Retry-After": str(RETRY_AFTER_S)})
        return JSONResponse({"status": "ready", "experts": sorted(self.experts)})

    def _model(self) -> dict:
        from steer.serve.service import MODEL, allowed_strengths

        return {"id": MODEL, "object": "model", "created": 0, "owned_by": "steerlab", "experts": sorted(self.experts),
                "fallback": self.router.fallback, "request_strengths": allowed_strengths(self.router)}

    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        return self._denied(request) or JSONResponse({"object": "list", "data": [self._model()]})

    @app.get("/v1/models/{model_id}")
    async def model(self, model_id: str, request: Request) -> JSONResponse:
        from steer.serve.service import MODEL

        if denied := self._denied(request):
            return denied
        if model_id != MODEL:
            return _error(404, f"unknown model {model_id!r}; this service serves {MODEL!r}", "model")
        return JSONResponse(self._model())

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> JSONResponse:
        from ray.serve.exceptions import BackPressureError

        from steer.serve.service import BadRequest, ChatRequest, adjustments_for, completion, to_deployed

        if denied := self._denied(request):
            return denied
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        try:
            chat = ChatRequest.parse(body, self.limits)
            start = time.perf_counter()
            async with self.lock:  # one reading at a time on this replica's reader
                decision = (await asyncio.to_thread(self.router.decide, self.reader, [chat.prompt]))[0]
            decided = time.perf_counter()
            decision, rerouted = to_deployed(self.router, decision, self.experts)
            adjustments = adjustments_for(self.router, decision, chat)
            answer = await self.experts[decision.expert].respond.remote(
                chat.prompt, chat.system, [asdict(a) for a in adjustments], chat.generation_settings(), chat.stop)
        except BadRequest as error:
            return _error(400, str(error), error.param)
        except BackPressureError:
            return _error(503, f"the expert's queue is full; retry in {RETRY_AFTER_S} s",
                          headers={"Retry-After": str(RETRY_AFTER_S)})
        response = completion(chat, decision, adjustments, answer, {
            "decide": 1000 * (decided - start), "answer": 1000 * (time.perf_counter() - decided)})
        if rerouted:
            response["steerlab"]["rerouted_from"] = rerouted
        if self.log:
            await self._write_log(response)
        return JSONResponse(response)

    async def _write_log(self, response: dict) -> None:
        """One JSONL line per served request: its id, the decision, what was applied, timings."""
        from experts.files import append_jsonl

        row = {"id": response["id"], "created": response["created"], "model": response["model"],
               **{k: response["steerlab"][k] for k in ("decision", "applied", "settings", "timings_ms")},
               "rerouted_from": response["steerlab"].get("rerouted_from"),
               "usage": response["usage"], "finish_reason": response["choices"][0]["finish_reason"]}
        async with self.log_lock:
            await asyncio.to_thread(append_jsonl, self.log, [row])


@dataclass(frozen=True)
class ServeSettings:
    """How the service runs: where it listens and how much work it takes at once."""

    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1  # per expert
    max_ongoing_requests: int = 4  # per replica
    max_queued_requests: int = 32  # per deployment; past this a request gets HTTP 503
    cpus_per_replica: float = 0.5
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
        for name in ("replicas", "max_ongoing_requests", "max_queued_requests"):
            if getattr(self, name) < 1:
                raise SteerlabError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.cpus_per_replica <= 0 or self.request_timeout_s <= 0 or self.gpus_per_replica < 0:
            raise SteerlabError("cpus-per-replica and request-timeout must be positive, gpus-per-replica at least 0")


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
                              "request_timeout_s": settings.request_timeout_s})
    threads = max(1, int(settings.cpus_per_replica))
    options = dict(num_replicas=settings.replicas, max_ongoing_requests=settings.max_ongoing_requests,
                   max_queued_requests=settings.max_queued_requests,
                   ray_actor_options={"num_cpus": settings.cpus_per_replica, "num_gpus": settings.gpus_per_replica})
    policy_files = {r.file: (router.folder / r.file).read_bytes() for r in router.rules}
    rules = [asdict(r) for r in router.rules]
    handles = {name: ExpertService.options(name=f"expert:{name}", **options).bind(
        name, router.fingerprints.get(name), rules, policy_files, threads, settings.top_k) for name in experts}
    limits = {"max_tokens": settings.max_tokens, "max_prompt_chars": settings.max_prompt_chars}
    ingress = RouterService.options(name="router", **options).bind(_pack(Path(router_folder)), handles, limits, threads,
                                                                   settings.api_key, settings.log)
    serve.run(ingress, name=APP, route_prefix="/", blocking=False)
    return f"http://{settings.host}:{settings.port}"


def shutdown() -> None:
    serve.delete(APP)
