"""`cellar chat`: a terminal chat that streams replies; Ctrl+C stops a reply, Ctrl+D leaves.

Each turn evaluates only the new tokens: the conversation stays in the KV cache and the runtime
reuses the common prefix. A conversation that outgrows the context loses its oldest turns (the system
prompt stays; prompting.fit_chat) and says so. Commands: /help, /reset, /save FILE, /exit.
"""
from __future__ import annotations

import sys

import re

from engine.errors import CellarError
from engine.prompting import fit_chat, fit_raw, leading_system, raw_tokens, reply_room
from engine.sampling import Sampler

HELP = ("/help       this list\n"
        "/reset      start the conversation over (the system prompt stays)\n"
        "/save FILE  keep the session in FILE (cellar chat --load-session FILE goes on from it)\n"
        "/exit       leave (so do Ctrl+D and /quit); Ctrl+C stops a reply")
COMMAND = re.compile(r"/[A-Za-z?]+")     # "/usr/bin ..." and "/ 2" are messages, "/x" a command


def chat_loop(model, args, params) -> int:
    sampler = Sampler(params)
    messages: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    history: list[int] = []
    if args.load_session:
        from engine import session
        info = session.load(model, args.load_session)
        history = list(info.tokens)
        messages = list(info.extra.get("messages", messages))
        print(f"[restored {len(history)} tokens from {args.load_session}]", file=sys.stderr)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chatting with {model.gguf.path.name} (ctx {model.n_ctx}). Ctrl+C stops a reply, "
              "Ctrl+D or /exit leaves, /reset starts over, /save FILE keeps the session.", file=sys.stderr)
    cancel = {"flag": False}
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text in ("/help", "/?"):
            print(HELP, file=sys.stderr)
            continue
        if text == "/reset":
            messages = [m for m in messages if m["role"] == "system"]
            history = []
            model.reset()
            print("[conversation cleared]", file=sys.stderr)
            continue
        if text.startswith("/save"):
            parts = text.split(maxsplit=1)
            if len(parts) < 2:
                print("[usage: /save FILE]", file=sys.stderr)
                continue
            from engine import session
            try:
                session.save(model, parts[1], tokens=history, sampler=sampler,
                             extra={"messages": messages, "raw": bool(args.raw)})
            except (CellarError, OSError) as e:     # the chat goes on: nothing is lost
                print(f"[not saved: {e}]", file=sys.stderr)
                continue
            print(f"[saved {len(history)} tokens to {parts[1]}]", file=sys.stderr)
            continue
        if COMMAND.fullmatch(text.split(maxsplit=1)[0]):
            print(f"[unknown command {text.split()[0]}: /help lists them]", file=sys.stderr)
            continue
        if args.raw:
            prompt, dropped = fit_raw(history, raw_tokens(model, line, continuing=bool(history)), model.n_ctx,
                                      reply_room(model.n_ctx, args.n_predict))
            if dropped:
                print(f"[the text outgrew the context ({model.n_ctx} tokens): its {dropped} oldest tokens "
                      "left out]", file=sys.stderr)
        else:
            messages.append({"role": "user", "content": line})
            try:
                prompt, left_out = fit_chat(model, messages, room=reply_room(model.n_ctx, args.n_predict))
            except CellarError as e:
                messages.pop()
                print(f"[{e}]", file=sys.stderr)
                continue
            if left_out:
                head = leading_system(messages)
                messages = messages[:head] + messages[head + left_out:]
                print(f"[the conversation outgrew the context ({model.n_ctx} tokens): its {left_out} oldest "
                      f"message{'s' if left_out != 1 else ''} left out]", file=sys.stderr)
        cancel["flag"] = False
        pieces: list[str] = []

        def on_token(tid, piece):
            if piece:
                pieces.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()

        try:
            res = model.generate(prompt, args.n_predict, sampler, on_token=on_token,
                                 should_cancel=lambda: cancel["flag"])
        except CellarError as e:                 # one line, and the chat goes on
            if not args.raw:
                messages.pop()
            print(f"[{e}]", file=sys.stderr)
            continue
        except KeyboardInterrupt:
            cancel["flag"] = True
            print("\n[stopped]", file=sys.stderr)
            history = model.cached_tokens()
            if not args.raw:         # the reply so far is the turn's answer: the roles keep alternating
                messages.append({"role": "assistant", "content": "".join(pieces)})
            continue
        sys.stdout.write("\n")
        history = list(prompt) + list(res.tokens)
        if not args.raw:
            messages.append({"role": "assistant", "content": res.text})
        rate = len(res.tokens) / res.t_gen_s if res.t_gen_s > 0 else 0.0
        print(f"[{res.n_eval} evaluated, {len(res.tokens)} generated, {rate:.1f} tok/s]", file=sys.stderr)
    if args.save_session and history:
        from engine import session
        session.save(model, args.save_session, tokens=history, sampler=sampler,
                     extra={"messages": messages, "raw": bool(args.raw)})
    model.close()
    return 0
