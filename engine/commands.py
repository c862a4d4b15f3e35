"""The `cellar` subcommands (pull, run, chat, tokenize, inspect, bench, serve)."""
from __future__ import annotations

import json
import resource
import sys
import time

from engine.errors import BadRequest, CellarError
from engine.pull import pull, resolve_model


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _err(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def cmd_pull(args) -> int:
    path = pull(args.name, log=lambda s: _err(s))
    print(path)
    return 0


def _load_options(args):
    from engine.runtime import LoadOptions
    return LoadOptions(ctx=args.ctx, batch=args.batch, ubatch=min(args.batch, 512), threads=args.threads,
                       mmap=not args.no_mmap, mlock=args.mlock,
                       gpu_layers=0 if args.gpu_layers == "auto" else args.gpu_layers, kv_type=args.kv_type)


def _sampling(args):
    from engine.sampling import SamplingParams
    return SamplingParams(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                          repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                          presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                          seed=None if args.seed < 0 else args.seed)


def _load_model(args, quiet: bool):
    from engine.runtime import Model
    path = resolve_model(args.model)
    opts = _load_options(args)
    model = Model.load(path, opts)
    for w in getattr(model, "warnings", ()):     # --gpu-layers without CUDA: said even with --json
        _err(f"warning: {w}")
    rep = getattr(model.gguf, "mlock_report", None)
    if rep is not None and not getattr(rep, "locked", True) and not quiet:
        _err(f"warning: {rep.message}")
    return model


def cmd_run(args) -> int:
    from engine.prompting import chat_tokens, raw_tokens
    from engine.sampling import Sampler
    model = _load_model(args, quiet=args.json)
    sampler = Sampler(_sampling(args))
    messages: list[dict] = []
    history: list[int] = []
    if args.load_session:
        from engine import session
        info = session.load(model, args.load_session)
        history = list(info.tokens)
        messages = list(info.extra.get("messages", []))
        if info.sampler_state is not None and args.seed < 0:
            sampler.set_state(info.sampler_state)
        if info.extra.get("raw") is not None and info.extra["raw"] != args.raw:
            raise BadRequest(f"the session in {args.load_session} was saved in "
                             f"{'raw' if info.extra['raw'] else 'chat'} mode; run with"
                             f"{'' if info.extra['raw'] else 'out'} --raw to continue it")
    if args.raw:
        prompt = history + (raw_tokens(model, args.prompt, continuing=bool(history)) if args.prompt else [])
    else:
        if not messages and args.system:
            messages.append({"role": "system", "content": args.system})
        if args.prompt or not history:
            messages.append({"role": "user", "content": args.prompt})
            prompt = chat_tokens(model, messages)
        else:
            prompt = history
    if not prompt:
        raise BadRequest("the prompt is empty; give some text with -p (or a session to continue)")
    stream = not args.json and sys.stdout.isatty() or (not args.json)

    def on_token(tid, piece):
        if stream and piece:
            sys.stdout.write(piece)
            sys.stdout.flush()

    res = model.generate(prompt, args.n_predict, sampler, on_token=on_token)
    if args.save_session:
        from engine import session
        if not args.raw:
            messages = messages + [{"role": "assistant", "content": res.text}]
        session.save(model, args.save_session, tokens=list(prompt) + list(res.tokens), sampler=sampler,
                     extra={"messages": messages, "raw": args.raw})
    if args.json:
        print(json.dumps({
            "prompt_tokens": len(prompt), "tokens": list(res.tokens), "text": res.text,
            "n_eval": res.n_eval, "peak_rss_mib": round(peak_rss_mib(), 1),
            "tok_s": round(len(res.tokens) / res.t_gen_s, 2) if res.t_gen_s > 0 else 0.0,
            "stop_reason": res.stop_reason, "ttft_s": round(res.ttft_s, 4),
        }, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        rate = len(res.tokens) / res.t_gen_s if res.t_gen_s > 0 else 0.0
        _err(f"[{len(prompt)} prompt tokens, {res.n_eval} evaluated, {len(res.tokens)} generated, "
             f"{rate:.1f} tok/s, stop: {res.stop_reason}]")
    model.close()
    return 0


def cmd_chat(args) -> int:
    from engine.chat_repl import chat_loop
    model = _load_model(args, quiet=False)
    return chat_loop(model, args, _sampling(args))


def cmd_tokenize(args) -> int:
    from engine.gguf import GGUFFile
    from engine.tokenizer import load_tokenizer
    g = GGUFFile.open(resolve_model(args.model), read_data=False)
    tok = load_tokenizer(g)
    ids = tok.encode(args.prompt, add_special=args.bos, parse_special=True)
    pieces = tok.pieces(ids)
    if args.json:
        print(json.dumps({"tokens": ids, "pieces": pieces}, ensure_ascii=False))
    else:
        for i, p in zip(ids, pieces):
            print(f"{i:>7} {p!r}")
    return 0


def cmd_inspect(args) -> int:
    from engine.memory import inspect_command
    args.model = str(resolve_model(args.model))
    return inspect_command(args)


def cmd_bench(args) -> int:
    from engine.bench import run_bench
    out = run_bench(resolve_model(args.model), pp=args.pp, tg=args.tg, threads=args.threads,
                    ctx=args.ctx, mode=args.mode, kv_type=args.kv_type,
                    gpu_layers=0 if args.gpu_layers == "auto" else args.gpu_layers, warn=_err)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:<16}{v}")
    return 0


def cmd_serve(args) -> int:
    try:
        from engine.server import serve
    except ImportError:
        raise CellarError("`cellar serve` is not part of this build yet; use `cellar run` or the app") from None
    return serve(args)
