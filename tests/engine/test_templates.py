import time

import pytest

from engine.errors import TemplateError
from engine.templates import builtin_template, chat_template_for, render_chat

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]


def test_gemma_builtin_turn_format():
    out = render_chat(builtin_template("gemma"), CHAT, bos_token="<bos>")
    assert out == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                   "<start_of_turn>model\nHello!<end_of_turn>\n"
                   "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")


def test_chatml_without_generation_prompt():
    out = render_chat(builtin_template("chatml"), CHAT[:2], add_generation_prompt=False)
    assert out == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


class FakeGGUF:
    def __init__(self, arch, tpl=None):
        self.arch, self._tpl = arch, tpl

    def get(self, key, default=None):
        return self._tpl if key == "tokenizer.chat_template" else default


def test_template_choice_prefers_the_files_own():
    assert chat_template_for(FakeGGUF("llama", "{{ 'own' }}")) == "{{ 'own' }}"
    assert "<start_of_turn>" in chat_template_for(FakeGGUF("gemma3"))
    assert "<|im_start|>" in chat_template_for(FakeGGUF("llama"))


def test_smollm2_own_template_renders(smollm2_path):
    from engine.gguf import GGUFFile
    g = GGUFFile.open(smollm2_path, read_data=False)
    out = render_chat(chat_template_for(g), CHAT[1:2])
    assert out.startswith("<|im_start|>") and out.endswith("<|im_start|>assistant\n")


SSTI = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__['os'].system('id') }}",
    "{% set ns = namespace() %}{{ ns.__class__.__init__.__globals__ }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os') }}",
    "{{ lipsum.__globals__['os'].popen('id') }}",
    "{{ request.application.__globals__ }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ raise_exception.__globals__['os'] }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ ().__class__.__bases__[0].__subclasses__()[59]()._module.__builtins__['__import__']('os') }}",
    "{% set x = messages.append({'role':'x'}) %}",
]


@pytest.mark.parametrize("payload", SSTI)
def test_template_injection_payloads_are_refused(payload):
    with pytest.raises(TemplateError):
        render_chat(payload, CHAT)


def test_endless_template_is_stopped_in_bounded_time():
    t = time.monotonic()
    with pytest.raises(TemplateError, match="longer than"):
        render_chat("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                    CHAT, timeout_s=0.5)
    assert time.monotonic() - t < 3


def test_huge_string_is_refused():
    with pytest.raises(TemplateError, match="refused"):
        render_chat("{{ 'x' * 100000000 }}", CHAT)
    with pytest.raises(TemplateError, match="characters"):
        render_chat("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", CHAT)


def test_syntax_error_and_raise_exception_are_one_line():
    with pytest.raises(TemplateError, match="syntax error on line 1"):
        render_chat("{% for %}", CHAT)
    with pytest.raises(TemplateError, match="roles must alternate"):
        render_chat("{{ raise_exception('roles must alternate') }}", CHAT)
