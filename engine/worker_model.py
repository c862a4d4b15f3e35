"""What the worker does with a model: load it, stream a reply, save and restore a session.

Kept apart from the request loop (engine/worker.py) so that the loop reads as plumbing and this
file as the work. Imported by the worker on the first request that needs it (it pulls in torch).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict

from engine import protocol as P
from engine.errors import BadRequest


def check_file(path: str) -> None:
    """Read the header, metadata and tensor table only: a bad file is refused before the loaded
    model is let go, so a failed load leaves the worker as it was."""
    from engine.gguf import GGUFFile
    if not os.path.isfile(path):
        raise BadRequest(f"no model file at {path}; pick an existing .gguf file")
    GGUFFile.open(path, read_data=False).close()


def load(req: P.Load, progress):
    from engine.runtime import LoadOptions, Model
    opts = LoadOptions(ctx=req.ctx, batch=req.batch, ubatch=req.ubatch, threads=req.threads, mmap=req.mmap,
                       mlock=req.mlock, gpu_layers=req.gpu_layers, kv_type=req.kv_type)
    t0 = time.perf_counter()
    progress(0.0, "opening")
    model = Model.load(req.path, opts, progress=progress)
    model._cellar_load_s = time.perf_counter() - t0
    progress(1.0, "ready")
    return model


def loaded_event(model, req: P.Load) -> P.ModelLoaded:
    rep = getattr(model.gguf, "mlock_report", None)
    warning = rep.message if rep is not None and not getattr(rep, "locked", True) else ""
    warning = "; ".join([warning] * bool(warning) + list(getattr(model, "warnings", ())))
    return P.ModelLoaded(path=str(req.path), arch=str(model.arch), n_ctx=int(model.n_ctx),
                         n_vocab=int(model.tokenizer.n_vocab), load_s=round(model._cellar_load_s, 4),
                         options=asdict(req), warning=warning or "")


def memory_plan(model) -> dict | None:
    """The loaded model's memory breakdown as plain bytes, when the runtime offers one."""
    for name in ("memory_plan", "memory_breakdown"):
        attr = getattr(model, name, None)
        value = attr() if callable(attr) else attr
        if isinstance(value, dict):
            return value
        if value is not None and hasattr(value, "to_dict"):
            return value.to_dict()
    return None


def set_threads(n: int, model=None) -> None:
    import torch
    if n < 1:
        raise BadRequest(f"threads must be 1 or more (got {n})")
    torch.set_num_threads(n)
    if model is not None and hasattr(model, "threads"):
        model.threads = n                       # the runtime picks torch's threads per step from this
    try:
        from engine import kernels
        kernels.set_threads(n)
    except ImportError:
        pass


def _sampler(w, req: P.Generate):
    from engine.sampling import Sampler, SamplingParams
    sampler = Sampler(SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
                                     min_p=req.min_p, repeat_penalty=req.repeat_penalty,
                                     repeat_last_n=req.repeat_last_n, seed=req.seed))
    state = getattr(w, "restored_sampler_state", None)
    if state is not None and req.seed is None and w.conversation == req.conversation_id:
        sampler.set_state(state)
    w.restored_sampler_state = None
    return sampler


def _prompt(w, req: P.Generate) -> tuple[list[int], bool, int]:
    """(tokens, raw, messages left out): a chat that outgrew the context loses its oldest turns from the
    prompt (prompting.fit_chat; the app keeps them), the same ones on the conversation's next turns."""
    from engine.prompting import fit_chat, raw_tokens, reply_room
    model = w.model
    if req.messages is not None:
        if not req.messages:
            raise BadRequest("the conversation has no messages; send at least one")
        before = w.left_out if w.conversation == req.conversation_id else 0
        ids, left_out = fit_chat(model, list(req.messages), room=reply_room(model.n_ctx, req.max_tokens),
                                 left_out=before)
        return ids, False, left_out
    if req.prompt is None:
        raise BadRequest("a Generate request needs messages (chat) or a prompt (raw completion)")
    if req.session_path:                        # continue the restored session: the prompt is appended
        history = list(w.history)
        return history + (raw_tokens(model, req.prompt, continuing=bool(history)) if req.prompt else []), True, 0
    return raw_tokens(model, req.prompt), True, 0


def generate(w, req: P.Generate) -> P.GenerationDone:
    """Stream one reply; returns the GenerationDone to send."""
    model, rid = w.model, req.request_id
    if req.max_tokens < 0:
        raise BadRequest(f"max_tokens must be 0 or more (got {req.max_tokens})")
    if req.session_path:
        w.send(restore_session(w, req.session_path, req.conversation_id, rid))
    prompt, raw, left_out = _prompt(w, req)
    if not prompt:
        raise BadRequest("the prompt is empty; type something first")
    sampler = _sampler(w, req)
    if w.conversation != req.conversation_id:
        w.conversation, w.messages, w.history = None, [], []
    n_total = int(getattr(model, "n_ctx", 0))
    count = [0]
    w.telemetry.generation_started()
    w.telemetry.kv = (len(prompt), n_total)

    def on_token(token_id, piece):
        count[0] += 1
        w.send(P.Token(rid, int(token_id), piece or ""))
        w.telemetry.note_token((min(len(prompt) + count[0], n_total), n_total))
        w.on_token_hook()

    res = model.generate(prompt, req.max_tokens, sampler, seq_id=0, stop=tuple(req.stop), on_token=on_token,
                         should_cancel=w.cancel.is_set)
    n = len(res.tokens)
    tok_s = n / res.t_gen_s if res.t_gen_s > 0 else 0.0
    decoded = n - (1 if n and res.stop_reason != "eos" else 0)      # the last token is not evaluated
    prompt_eval = max(0, int(res.n_eval) - decoded)
    w.telemetry.generation_finished(tok_s)
    w.conversation, w.raw, w.sampler, w.left_out = req.conversation_id, raw, sampler, left_out
    w.history = list(prompt) + [int(t) for t in res.tokens]        # the last token may not be cached yet
    w.messages = (list(req.messages) + [{"role": "assistant", "content": res.text}]) if not raw else []
    return P.GenerationDone(
        request_id=rid, stop_reason=res.stop_reason, text=res.text, n_tokens=n, prompt_tokens=len(prompt),
        n_eval=int(res.n_eval), prompt_eval=prompt_eval, ttft_s=round(float(res.ttft_s), 4), tok_s=round(tok_s, 2),
        prompt_tok_s=round(prompt_eval / res.t_prompt_s, 2) if res.t_prompt_s > 0 else 0.0,
        t_prompt_s=round(float(res.t_prompt_s), 4), t_gen_s=round(float(res.t_gen_s), 4), left_out=left_out)


def save_session(w, req: P.SaveSession) -> P.SessionSaved:
    from engine import session
    if w.conversation != req.conversation_id:
        raise BadRequest(f"conversation {req.conversation_id!r} is not the one in the KV cache; "
                         "send a reply in it first")
    tokens = list(w.history) or list(w.model.cached_tokens(0))
    session.save(w.model, req.path, tokens=tokens, sampler=w.sampler,
                 extra={"messages": w.messages, "raw": w.raw, "conversation_id": req.conversation_id})
    return P.SessionSaved(req.path, req.conversation_id, len(tokens), req.request_id)


def restore_session(w, path: str, conversation_id: str, request_id: str | None) -> P.SessionRestored:
    if not os.path.isfile(path):
        raise BadRequest(f"no session file at {path}")
    from engine import session
    info = session.load(w.model, path)
    extra = dict(getattr(info, "extra", None) or {})
    w.conversation, w.messages, w.left_out = conversation_id, list(extra.get("messages", [])), 0
    w.raw = bool(extra.get("raw", False))
    w.history = list(info.tokens)
    w.restored_sampler_state = getattr(info, "sampler_state", None)
    return P.SessionRestored(path, conversation_id, len(info.tokens), list(w.messages), request_id)
