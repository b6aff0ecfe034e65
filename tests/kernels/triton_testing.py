"""Helpers shared by the Triton kernel tests: the interpreter child suite and ahead-of-time compiles.

Triton decorates its own library functions when it is imported, so TRITON_INTERPRET=1 must be set before
that: the `test_interpreted_*` tests of a file run in a child pytest started with the variable set.
"""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
ROOT = Path(__file__).resolve().parents[2]
interpreter_only = pytest.mark.skipif(not INTERPRETING, reason="runs under TRITON_INTERPRET=1 in the child "
                                                               "pytest of test_interpreter_suite_in_a_subprocess")


def run_interpreted_suite(test_file: str, timeout: float = 900) -> None:
    """Run `test_file`'s `interpreted` tests in a child pytest with TRITON_INTERPRET=1; all must pass, none skip."""
    if INTERPRETING:
        pytest.skip("already interpreting: the test_interpreted_* tests run in this process")
    pytest.importorskip("triton")
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "interpreted",
                            test_file], cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "1"},
                           capture_output=True, text=True, timeout=timeout)
    report = child.stdout[-6000:] + child.stderr[-2000:]
    summary = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ""
    assert child.returncode == 0, report
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary and "deselected" in summary, report


def compile_for_cuda(kernel, pointer_types: dict[str, str], constexprs: dict, arch: int, **options):
    """Compile a `triton.jit` kernel to a cubin for sm_`arch` without a GPU (frontend, LLVM and ptxas).

    `pointer_types` maps each pointer argument to its element type ("fp16", "i32", ...); every other
    non-constexpr argument is an i32. Skips when triton's NVIDIA backend or a compiled kernel is missing.
    """
    pytest.importorskip("triton")
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    if "nvidia" not in backends or type(kernel).__name__ != "JITFunction":
        pytest.skip("needs triton's NVIDIA backend and a compiled (not interpreted) kernel")
    if "constexprs" not in inspect.signature(ASTSource).parameters:
        pytest.skip("this triton's ASTSource predates constexprs by name")
    signature = {p.name: "constexpr" if p.is_constexpr else "*" + pointer_types[p.name] if p.name in pointer_types
                 else "i32" for p in kernel.params}
    compiled = triton_compile(ASTSource(kernel, signature, constexprs=constexprs),
                              target=GPUTarget("cuda", arch, 32), options=options)
    assert compiled.asm["cubin"]
    return compiled
