#!/usr/bin/env python3
"""Builds link/hot-symbols.txt: the functions a running oxray executes, for the linker to place first.

usage: hot_symbols.py BINARY CALLGRIND_OUT... > link/hot-symbols.txt

Input: callgrind profiles (`--demangle=no`) of oxray processes running the training workload of
tools/hot-symbols.sh, each split in two parts by `--dump-before=oxray_startup_done`. Output, in
first-run order:
1. every function of BINARY that ran while serving (the part after the split), then the
   CPU-dispatched variants callgrind cannot see (valgrind emulates no AVX-512/VAES, so the AES-GCM
   and memmove paths taken on the real machine never show up in the profile) taken from BINARY's
   symbol table by name;
2. between the markers `oxray_startup_text_begin` and `oxray_startup_text_end`, the functions that
   ran only before the split (src/startup_text.rs drops their pages once the instance is ready).
"""
import re
import subprocess
import sys

# Symbols chosen at run time by CPUID: the crypto and libc string routines of every ISA level.
DISPATCHED = re.compile(
    r"aes_gcm|gcm_(init|gmult|ghash)|aes_hw_|aesni_|vpaes_|chacha20_|poly1305_|"
    r"avx512|evex|_avx2|_avx_|_sse2|_ssse3|_erms|OPENSSL_cpuid|CRYPTO_|"
    # RustCrypto's CPUID-chosen backends (VAES, SHA-NI: not emulated by valgrind either).
    r"x86_vaes|x86_aes|x86_sha|"
    # ring: chosen for AES-GCM only on CPUs with VAES but no AVX-512 (src/proxy/aead.rs), which
    # valgrind's CPU never is, so the profile never runs it.
    r"_ZN4ring|ring_core_"
)
# Run by static glibc at start to register the vDSO, which valgrind hides from the profiled process
# (found with gdb breakpoints over the text the real process kept resident).
AT_START = ["_dl_new_object", "_dl_setup_hash", "_dl_add_to_namespace_list"]
RECORD = re.compile(r"^(c?fn|c?ob)=\((\d+)\)(?: (.*))?$")
# Callgrind marks recursion depth with a suffix: `Once::call'2` is `Once::call`.
RECURSION = re.compile(r"'\d+$")


def is_startup(path):
    """The part callgrind dumped at the split (its trigger names the marker)."""
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("desc: Trigger:"):
                return "--dump-before=" in line
            if line.startswith(("fn=", "ob=")):
                break
    return False


def executed(binary_name, profiles):
    seen, order = set(), []
    for path in profiles:
        names, objects, current = {}, {}, None
        with open(path, errors="replace") as f:
            for line in f:
                m = RECORD.match(line.rstrip("\n"))
                if not m:
                    continue
                kind, idx, name = m.groups()
                if kind in ("ob", "cob"):
                    if name:
                        objects[idx] = name
                    if kind == "ob":
                        current = objects.get(idx, "")
                    continue
                if name:
                    names[idx] = RECURSION.sub("", name)
                # Callgrind names code without a symbol by its address: nothing the linker can place.
                if kind == "fn" and current.endswith("/" + binary_name):
                    n = names.get(idx, "")
                    if n and not n.startswith("0x") and n not in seen:
                        seen.add(n)
                        order.append(n)
    return order


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    binary, profiles = sys.argv[1], sys.argv[2:]
    name = binary.rsplit("/", 1)[-1]
    startup_parts = [p for p in profiles if is_startup(p)]
    if not startup_parts:
        sys.exit("hot_symbols: no start-up part in the profiles (run callgrind with --dump-before=oxray_startup_done)")
    serving = executed(name, [p for p in profiles if p not in startup_parts])
    startup = executed(name, startup_parts)
    if not serving or not startup:
        sys.exit("hot_symbols: no function of the binary in the profiles (wrong binary or empty run?)")
    nm = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
    functions = [p[2] for p in (line.split() for line in nm.splitlines()) if len(p) == 3 and p[1] in "tTwWi"]
    # Only names the linker can place (functions, and the `i` IFUNC resolvers static glibc runs at
    # start): assembler labels inside functions (aws-lc's `Lmld_*`) and
    # callgrind's pseudo-functions are not symbols, and would make a fresh list look partly stale.
    known = set(functions)
    # dict.fromkeys: first-run order, once each.
    hot = list(dict.fromkeys(n for n in serving if n in known))
    seen = set(hot)
    for f in functions:
        if f not in seen and DISPATCHED.search(f):
            seen.add(f)
            hot.append(f)
    begin, end = "oxray_startup_text_begin", "oxray_startup_text_end"
    if begin not in known or end not in known:
        sys.exit("hot_symbols: the binary has no start-up text markers (src/startup_text.rs)")
    # A profile that does see an AT_START name lists it once.
    cold = [n for n in dict.fromkeys(startup + AT_START) if n in known and n not in seen and n not in (begin, end)]
    print("\n".join(hot + [begin] + cold + [end]))


if __name__ == "__main__":
    main()
