"""`cellar` command line: argument parsing, error reporting and dispatch.

Heavy modules (torch, the runtime) are imported inside the commands, so `cellar --help`, `pull`,
`tokenize` and `inspect` start fast. Errors print one line on stderr starting `error:`; exit status 2
for bad input (flags, files, templates, sessions), 1 for anything else. Never a traceback: details of
an unexpected failure go to the log file (platformdirs log dir), and to stderr with --verbose.
"""
from __future__ import annotations

import argparse
import logging
import sys

from engine import __version__
from engine.errors import CellarError, exit_status
from engine.log import setup_logging

log = logging.getLogger("cellar")

COMMANDS = ("run", "chat", "inspect", "bench", "pull", "tokenize", "serve")


class _Parser(argparse.ArgumentParser):
    def error(self, message):                     # one line, exit 2, as the contract says
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def _positive(name):
    def conv(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, not '{s}'") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be above 0 (got {v})")
        return v
    return conv


def _nonneg(name):
    def conv(s):
        return 0 if s.strip() == "0" else _positive(name)(s)
    return conv


def _gpu_layers(s):
    if s == "auto":
        return "auto"
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpu-layers takes a number or 'auto', not '{s}'") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"--gpu-layers must be 0 or more (got {v})")
    return v


def _add_load_options(p: argparse.ArgumentParser, *, ctx_default: int | None = 4096):
    p.add_argument("model", help="path to a .gguf file, or a known name: default, smollm2, gemma3")
    p.add_argument("--ctx", type=_positive("--ctx"), default=ctx_default, help="context length in tokens")
    p.add_argument("--threads", type=_positive("--threads"), default=None,
                   help="CPU threads (default: physical cores)")
    p.add_argument("--no-mmap", action="store_true", help="read the weights into private memory")
    p.add_argument("--mlock", action="store_true", help="lock the weights in RAM")
    p.add_argument("--gpu-layers", type=_gpu_layers, default=0, help="layers on the GPU (number or auto)")
    p.add_argument("--kv-type", choices=["f16", "bf16", "q8_0"], default="f16", help="KV cache type")
    p.add_argument("--batch", type=_positive("--batch"), default=512, help="prompt batch size")


def _add_sampling(p: argparse.ArgumentParser):
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0 = greedy)")
    p.add_argument("--seed", type=int, default=-1, help="RNG seed (-1 = random)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("--presence-penalty", type=float, default=0.0, help="lower tokens seen in the last repeat-last-n")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="lower them by how often they were seen")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="cellar", description="Run local language models (GGUF) and see where every byte goes. "
                                             "With no command, starts the desktop app.")
    ap.add_argument("--version", action="version", version=f"cellar {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log details to stderr too")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("pull", help="fetch a known model; prints its path")
    p.add_argument("name", help="default, smollm2 or gemma3")

    for name, helptext in (("run", "generate a reply (or a raw completion) for one prompt"),
                           ("chat", "chat in the terminal, streaming")):
        p = sub.add_parser(name, help=helptext)
        _add_load_options(p)
        _add_sampling(p)
        if name == "run":
            p.add_argument("-p", "--prompt", required=True, help="the prompt text (may be empty with --load-session)")
            p.add_argument("-n", "--n-predict", type=_nonneg("-n"), default=64, help="tokens to generate")
            p.add_argument("--json", action="store_true", help="print one JSON object")
        else:
            p.add_argument("-n", "--n-predict", type=_nonneg("-n"), default=1024, help="most tokens per reply")
        p.add_argument("--raw", action="store_true", help="plain completion: no chat template")
        p.add_argument("--system", default=None, help="system prompt (chat template mode)")
        p.add_argument("--save-session", metavar="FILE", default=None, help="write the state after the run")
        p.add_argument("--load-session", metavar="FILE", default=None, help="restore a saved state first")

    p = sub.add_parser("inspect", help="memory plan and metadata, without loading tensor data")
    _add_load_options(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench", help="load time, prefill and decode speed, memory")
    p.add_argument("model")
    p.add_argument("--pp", type=_positive("--pp"), default=512, help="prompt tokens")
    p.add_argument("--tg", type=_positive("--tg"), default=128, help="generated tokens")
    p.add_argument("--threads", type=_positive("--threads"), default=2)
    p.add_argument("--ctx", type=_positive("--ctx"), default=None, help="context (default: pp + tg, at least 2048)")
    p.add_argument("--mode", choices=["mmap", "no-mmap", "mlock"], default="mmap")
    p.add_argument("--kv-type", choices=["f16", "bf16", "q8_0"], default="f16")
    p.add_argument("--gpu-layers", type=_gpu_layers, default=0, help="layers on the GPU (number or auto)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("tokenize", help="token ids of a text (special-token text parsed)")
    p.add_argument("model")
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("--bos", action="store_true", help="add BOS/EOS as the model's metadata asks")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("serve", help="OpenAI-compatible server on loopback")
    _add_load_options(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_nonneg("--port"), default=8080, help="TCP port (0: any free one)")
    p.add_argument("--parallel", type=_positive("--parallel"), default=4, help="requests decoded together")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument("--queue", type=_nonneg("--queue"), default=16,
                   help="requests that may wait for a slot; more get 503")
    p.add_argument("--max-tokens", type=_positive("--max-tokens"), default=4096,
                   help="cap on a request's max_tokens (and its default)")
    p.add_argument("--max-body", type=_positive("--max-body"), default=2 * 1024 * 1024,
                   help="largest request body in bytes; larger gets 413")
    p.add_argument("--timeout", type=_positive("--timeout"), default=600,
                   help="seconds a request may take, waiting included")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    if args.command is None:
        build_parser().print_help()
        return 0
    try:
        from engine import commands
        return int(getattr(commands, f"cmd_{args.command}")(args) or 0)
    except CellarError as e:
        log.info("%s failed: %s", args.command, e.message)
        sys.stderr.write(f"error: {e.message}\n")
        return exit_status(e.kind)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # the last line of defence: one line, details in the log
        from engine.oom import is_out_of_memory, loading_error
        if is_out_of_memory(e) and getattr(args, "model", None):
            log.info("%s ran out of memory: %s", args.command, e)
            sys.stderr.write(f"error: {loading_error(e, args.model).message}\n")
            return 1
        log.exception("unexpected failure in %s", args.command)
        first = str(e).splitlines()[0] if str(e) else ""
        sys.stderr.write(f"error: internal error in {args.command}: {type(e).__name__}: {first} "
                         "(details in the log; please report it)\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
