"""`cellar serve`: an OpenAI-compatible HTTP server (Starlette on uvicorn) over one loaded model.

    POST /v1/chat/completions   chat (the GGUF's template, sandboxed), streamed as server-sent events or not
    POST /v1/completions        plain completion (text or token ids)
    GET  /v1/models             the loaded model
    GET  /health                {"status": "ok", "model", "slots": [{"id", "state", "n_ctx", ...}], "queue"}

The model runs in the scheduler's thread (engine/scheduler.py: --parallel slots decoded together over
one KV cache); handlers never block the event loop: tokens come back through an asyncio queue fed
with call_soon_threadsafe. A client that disconnects cancels its request, and its slot frees at the
next step. Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}} with 400, 401,
404, 413 or 503. When listening, one JSON line goes to stdout: {"event": "listening", "url": ...}.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine import server_api as api
from engine.errors import BadRequest, CellarError
from engine.protocol import ErrorKind
from engine.scheduler import Busy, Failed, Finished, Job, Piece, Scheduler

log = logging.getLogger("cellar.server")

DEFAULT_MAX_BODY = 2 * 1024 * 1024


@dataclass
class ServerState:
    model: object                      # engine.runtime.Model
    scheduler: Scheduler
    model_name: str
    api_key: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    max_tokens: int = 4096             # cap on a request's max_tokens (and the default)
    time_limit_s: float = 600.0
    created: int = 0


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(api.error_body(status, message, param, code), status_code=status)


def _status_of(e: CellarError) -> int:
    if isinstance(e, Busy):
        return 503
    return 400 if e.kind in (ErrorKind.BAD_INPUT, ErrorKind.TEMPLATE) else 500


class _BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI middleware: the API key on /v1/*, and the body size limit (Content-Length, then counted)."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = self.state.api_key
        if key and scope["path"].startswith("/v1/"):
            given = headers.get("authorization", "")
            token = given[7:].strip() if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), key.encode()):
                msg = "invalid API key" if token else "missing API key: send 'Authorization: Bearer KEY'"
                return await _error(401, msg)(scope, receive, send)
        limit = self.state.max_body
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            return await _error(400, "the Content-Length header is not a number")(scope, receive, send)
        if length > limit:
            return await _error(413, f"the request body is {length} bytes; the limit is {limit}")(scope, receive, send)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge
            return msg

        async def watched_send(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _BodyTooLarge:
            if not started:
                await _error(413, f"the request body is over the limit of {limit} bytes")(scope, receive, send)


# ---- handlers -------------------------------------------------------------------------------------
async def _json_body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise api.ApiError(400, f"the body is not valid JSON ({e})")
    if not isinstance(body, dict):
        raise api.ApiError(400, "the body must be a JSON object")
    return body


def _submit(state: ServerState, prompt: list[int], gen: api.Generation) -> tuple[Job, asyncio.Queue]:
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    cap = state.max_tokens
    job = Job(prompt, min(gen.max_tokens or cap, cap), gen.params,
              emit=lambda ev: loop.call_soon_threadsafe(q.put_nowait, ev), stop=gen.stop,
              time_limit_s=state.time_limit_s, cache_prompt=gen.cache_prompt, ignore_eos=gen.ignore_eos)
    state.scheduler.submit(job)
    return job, q


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _result(request: Request, job: Job, q: asyncio.Queue):
    """Wait for the job's end; None when the client went away first (the job is then cancelled)."""
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        while True:
            get = asyncio.ensure_future(q.get())
            done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                return None
            ev = get.result()
            if isinstance(ev, (Finished, Failed)):
                return ev
    finally:
        gone.cancel()
        job.cancel()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _stream(job: Job, q: asyncio.Queue, first, piece, last, usage_chunk, include_usage: bool,
            tail=lambda: []) -> StreamingResponse:
    """Server-sent events: first, piece(text) (a list of chunks) per piece of text, tail() (the chunks held
    back to the end), last(finish_reason), the usage chunk if asked for, [DONE]."""
    async def events():
        try:
            if first is not None:
                yield _sse(first)
            while True:
                ev = await q.get()
                if isinstance(ev, Piece):
                    for chunk in piece(ev.text):
                        yield _sse(chunk)
                elif isinstance(ev, Finished):
                    for chunk in tail():
                        yield _sse(chunk)
                    yield _sse(last(ev.finish_reason if ev.finish_reason != "cancelled" else "stop"))
                    if include_usage:
                        yield _sse(usage_chunk(api.usage(ev.prompt_tokens, ev.completion_tokens)))
                    break
                elif isinstance(ev, Failed):
                    yield _sse(api.error_body(_status_of(ev.error), ev.error.message))
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()                  # the client went away mid-stream: free the slot

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def chat_completions(request: Request) -> Response:
    state: ServerState = request.app.state.cellar
    body = await _json_body(request)
    gen = api.parse_generation(body)
    messages = api.parse_messages(body)
    from engine.prompting import chat_tokens
    prompt = await run_in_threadpool(chat_tokens, state.model, messages)
    job, q = _submit(state, prompt, gen)
    rid, name, created = api.new_id("chatcmpl"), state.model_name, int(time.time())
    split = api.reasoning_format(body) != "none"
    # a template that ends its generation prompt with <think> (DeepSeek-R1's distillations) opened the block
    opened = split and _prompt_tail(state.model, prompt).rstrip().endswith(api.OPEN)
    if gen.stream:
        s = api.ReasoningSplit(opened) if split else None

        def deltas(parts):
            return [api.chat_chunk(rid, name, created, {field: text}) for field, text in parts]
        return _stream(job, q, api.chat_chunk(rid, name, created, {"role": "assistant", "content": ""}),
                       lambda text: deltas(s.feed(text) if s else [("content", text)]),
                       lambda fin: api.chat_chunk(rid, name, created, {}, fin),
                       lambda u: api.chat_chunk(rid, name, created, {}, usage_=u), gen.include_usage,
                       tail=lambda: deltas(s.finish()) if s else [])
    ev = await _result(request, job, q)
    if ev is None:
        return Response(status_code=499)
    if isinstance(ev, Failed):
        return _error(_status_of(ev.error), ev.error.message)
    reasoning, text = api.split_reasoning(ev.text, opened) if split else (None, ev.text)
    return JSONResponse(api.chat_response(rid, name, text, _finish(ev), ev.prompt_tokens, ev.completion_tokens,
                                          reasoning))


def _prompt_tail(model, prompt: list[int], n: int = 4) -> str:
    """The text of the prompt's last few tokens, special ones included."""
    tok = model.tokenizer
    return "".join(tok.token_to_piece(t).decode("utf-8", errors="replace") for t in prompt[-n:])


async def completions(request: Request) -> Response:
    state: ServerState = request.app.state.cellar
    body = await _json_body(request)
    gen = api.parse_generation(body)
    api.check_completion_extras(body)
    prompt = api.parse_prompt(body)
    if isinstance(prompt, str):
        from engine.prompting import raw_tokens
        prompt = await run_in_threadpool(raw_tokens, state.model, prompt)
    job, q = _submit(state, prompt, gen)
    rid, name, created = api.new_id("cmpl"), state.model_name, int(time.time())
    if gen.stream:
        return _stream(job, q, None, lambda text: [api.completion_chunk(rid, name, created, text)],
                       lambda fin: api.completion_chunk(rid, name, created, "", fin),
                       lambda u: api.completion_chunk(rid, name, created, "", usage_=u), gen.include_usage)
    ev = await _result(request, job, q)
    if ev is None:
        return Response(status_code=499)
    if isinstance(ev, Failed):
        return _error(_status_of(ev.error), ev.error.message)
    return JSONResponse(api.completion_response(rid, name, ev.text, _finish(ev), ev.prompt_tokens,
                                                ev.completion_tokens))


def _finish(ev: Finished) -> str:
    return "length" if ev.finish_reason == "length" else "stop"


async def models(request: Request) -> Response:
    state: ServerState = request.app.state.cellar
    m = state.model
    return JSONResponse({"object": "list", "data": [{
        "id": state.model_name, "object": "model", "created": state.created, "owned_by": "cellar",
        "meta": {"arch": m.arch, "n_ctx": m.n_ctx, "n_ctx_slot": state.scheduler.slot_ctx,
                 "n_vocab": m.tokenizer.n_vocab}}]})


async def health(request: Request) -> Response:
    state: ServerState = request.app.state.cellar
    st = await run_in_threadpool(state.scheduler.status)
    return JSONResponse({"status": "ok", "model": state.model_name, **st})


async def _on_api_error(request: Request, e: api.ApiError) -> Response:
    return _error(e.status, e.message, e.param, e.code)


async def _on_cellar_error(request: Request, e: CellarError) -> Response:
    return _error(_status_of(e), e.message)


async def _on_http_error(request: Request, e: HTTPException) -> Response:
    msg = {404: f"no route {request.url.path}; see /v1/models, /v1/chat/completions, /v1/completions, /health",
           405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
    return _error(e.status_code, msg)


async def _on_unexpected(request: Request, e: Exception) -> Response:
    log.exception("unexpected failure on %s", request.url.path)
    return _error(500, f"internal error: {type(e).__name__} (details in the server log)")


def create_app(state: ServerState) -> Starlette:
    from starlette.middleware import Middleware
    routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/health", health, methods=["GET"])]
    app = Starlette(routes=routes, middleware=[Middleware(Guard, state=state)],
                    exception_handlers={api.ApiError: _on_api_error, CellarError: _on_cellar_error,
                                        HTTPException: _on_http_error, Exception: _on_unexpected})
    app.state.cellar = state
    return app


# ---- the process ----------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: the OS picks one); one-line BadRequest when it cannot bind."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise BadRequest(f"cannot resolve --host {host!r} ({e.strerror}); give an address such as 127.0.0.1")
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise BadRequest(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host") from None
    sock.setblocking(False)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _run(server, sock: socket.socket, announce: dict) -> None:
    async def tell_when_listening():
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.02)
        sys.stdout.write(json.dumps(announce) + "\n")
        sys.stdout.flush()
        sys.stderr.write(f"cellar serve: listening on {announce['url']} ({announce['model']}, "
                         f"{announce['parallel']} slots); Ctrl-C stops\n")
        sys.stderr.flush()
    notice = asyncio.ensure_future(tell_when_listening())
    try:
        await server.serve(sockets=[sock])
    finally:
        notice.cancel()


def serve(args) -> int:
    import uvicorn

    from engine.commands import _load_options
    from engine.pull import resolve_model
    from engine.runtime import Model

    if not 1 <= args.parallel <= 62:
        raise BadRequest(f"--parallel must be 1 to 62 (got {args.parallel})")
    if args.gpu_layers not in (0, None):
        raise BadRequest("cellar serve runs the model on the CPU for now; leave out --gpu-layers")
    if not is_loopback(args.host) and not args.api_key:
        sys.stderr.write(f"warning: serving on {args.host} without --api-key: anyone who can reach this port "
                         "can use the model; add --api-key KEY\n")
    sock = bind(args.host, args.port)
    try:
        path = resolve_model(args.model)
        opts = _load_options(args)
        opts.n_seq = args.parallel
        if opts.ctx < args.parallel * 16:
            raise BadRequest(f"--ctx {opts.ctx} leaves under 16 tokens a slot for --parallel {args.parallel}; "
                             "raise --ctx or lower --parallel")
        model = Model.load(path, opts)
    except BaseException:
        sock.close()
        raise
    sched = Scheduler(model, args.parallel, args.queue)
    state = ServerState(model, sched, Path(path).name.removesuffix(".gguf"), args.api_key,
                        args.max_body, args.max_tokens, float(args.timeout), int(time.time()))
    config = uvicorn.Config(create_app(state), log_level="info" if args.verbose else "warning",
                            access_log=bool(args.verbose), lifespan="off", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    announce = {"event": "listening", "url": _url(sock), "model": state.model_name,
                "parallel": args.parallel, "n_ctx": model.n_ctx, "pid": os.getpid()}
    try:
        asyncio.run(_run(server, sock, announce))
    finally:
        sched.close()
        model.close()
        sock.close()
    return 0
