"""Gymnasium users who never `import lmrlgym`: the form the README documents works."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_the_documented_module_import_form_works_in_a_fresh_interpreter():
    calls = re.findall(r'^(gymnasium\.make\("lmrlgym:[^"]+"\))', README.read_text(), re.M)
    assert calls == ['gymnasium.make("lmrlgym:lmrlgym/Wordle-v0")']
    out = fresh_python(
        "import sys, gymnasium\n"
        "assert 'lmrlgym' not in sys.modules\n"
        f"env = {calls[0]}\n"
        "obs, info = env.reset(seed=0)\n"
        "print(repr(obs), info['hidden_word'], type(env.unwrapped).__name__)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["'Wordle:\\n'", "china", "WordleEnv"]


def test_the_bare_namespace_needs_the_import_as_the_readme_says():
    out = fresh_python("import gymnasium\ngymnasium.make('lmrlgym/Wordle-v0')\n")
    assert out.returncode != 0 and "NamespaceNotFound" in out.stderr
    text = " ".join(README.read_text().split())
    assert "code that never imports `lmrlgym` uses Gymnasium's module-import form" in text
