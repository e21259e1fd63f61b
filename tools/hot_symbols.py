#!/usr/bin/env python3
"""Builds link/hot-symbols.txt: the functions a running oxray executes, for the linker to place first.

usage: hot_symbols.py BINARY CALLGRIND_OUT... > link/hot-symbols.txt

Input: callgrind profiles (`--demangle=no`) of oxray processes running the training workload of
tools/hot-symbols.sh. Output: every function of BINARY that ran, in first-run order, then the
CPU-dispatched variants callgrind cannot see (valgrind emulates no AVX-512/VAES, so the AES-GCM and
memmove paths taken on the real machine never show up in the profile) taken from BINARY's symbol
table by name.
"""
import re
import subprocess
import sys

# Symbols chosen at run time by CPUID: the crypto and libc string routines of every ISA level.
DISPATCHED = re.compile(
    r"aes_gcm|gcm_(init|gmult|ghash)|aes_hw_|aesni_|vpaes_|chacha20_|poly1305_|"
    r"avx512|evex|_avx2|_avx_|_sse2|_ssse3|_erms|OPENSSL_cpuid|CRYPTO_"
)
RECORD = re.compile(r"^(c?fn|c?ob)=\((\d+)\)(?: (.*))?$")


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
                    names[idx] = name
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
    order = executed(binary.rsplit("/", 1)[-1], profiles)
    if not order:
        sys.exit("hot_symbols: no function of the binary in the profiles (wrong binary or empty run?)")
    seen = set(order)
    nm = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
    for line in nm.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW" and parts[2] not in seen and DISPATCHED.search(parts[2]):
            seen.add(parts[2])
            order.append(parts[2])
    print("\n".join(order))


if __name__ == "__main__":
    main()
