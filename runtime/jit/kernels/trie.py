"""Greedy longest-match tokenisation over a byte trie in compiled code (the RWKV World tokenizer's).

The trie's edges live in one open-addressing hash table, so following an edge costs an add, a
shift and (usually) one 8-byte load. Nodes are numbered (root 0), and with M = TRIE_HASH_MULT (odd):

    code(node)        = node * 256 * M  mod 2**32      # the node as the kernel knows it; root = 0
    hash(node, byte)  = code(node) + byte * M  mod 2**32 = (node * 256 + byte) * M  mod 2**32

Multiplying by an odd number is a bijection modulo 2**32, so the hash of an edge is also its exact
identity (node * 256 + byte stays below 2**31). Slot `hash >> shift` holds, in one uint64,
`hash << 32 | code(child)`; collisions go to the next slot (linear probing). Empty slots hold
TRIE_EMPTY << 32, where TRIE_EMPTY is the image of 2**32 - 1, which no edge can have.
`slot_token[slot]` is the token id ending at that slot's child, or -1.

    int64 trie_longest_match(uint8* data, int64 n, uint64* table, int32* slot_token, int64 shift,
                             int32* out)

walks from the root at each position while edges exist, remembers the last token seen, emits it and
continues after it; it returns the number of ids written to `out` (at most n). A position where no
token starts would emit -1 and advance one byte: `TrieMatcher` only calls it when every byte is a
token. `TrieMatcher` builds the table from (id, bytes) pairs and calls the kernel.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

import numpy as np
from llvmlite import ir

from runtime.jit.engine import CompiledModule
from runtime.jit.irkit import I8P, I32, I32P, I64, I64P, get_or_define, i64, load_at, store_at
from runtime.jit.shared import shared_function, shared_module

TRIE_FN = "trie_longest_match"
TRIE_HASH_MULT = 0x9E3779B1  # odd; 2**32 / golden ratio (Knuth's multiplicative hashing)
TRIE_EMPTY = (0xFFFFFFFF * TRIE_HASH_MULT) & 0xFFFFFFFF
MAX_NODES = 1 << 23  # node * 256 + byte must stay below 2**31
TRIE_CTYPE = ctypes.CFUNCTYPE(
    ctypes.c_int64,
    ctypes.c_char_p,  # data
    ctypes.c_int64,  # n
    ctypes.c_void_p,  # table
    ctypes.c_void_p,  # slot_token
    ctypes.c_int64,  # shift
    ctypes.c_void_p,  # out
)


def _c32(v: int) -> ir.Constant:
    return ir.Constant(I32, v - (1 << 32) if v >= 1 << 31 else v)


def emit_trie_longest_match(module: ir.Module) -> ir.Function:
    """Define `trie_longest_match` (external linkage) in `module`."""

    def build(fn: ir.Function) -> None:
        for arg, name in zip(fn.args, ("data", "n", "table", "slot_token", "shift", "out"), strict=True):
            arg.name = name
            if isinstance(arg.type, ir.PointerType):
                arg.add_attribute("noalias")
        data, n, table, slot_token, shift, out = fn.args

        b = ir.IRBuilder(fn.append_basic_block("entry"))
        # Loop-carried values live in allocas; SROA turns them into registers.
        pos, n_out, j, best, best_end, slot = (
            b.alloca(I64, name=s) for s in ("pos", "n_out", "j", "best", "best_end", "slot")
        )
        node = b.alloca(I32, name="node")
        mask = b.sub(b.shl(i64(1), b.sub(i64(32), shift)), i64(1))  # table size - 1
        b.store(i64(0), pos)
        b.store(i64(0), n_out)
        blocks = {s: fn.append_basic_block(s) for s in (
            "outer.head", "outer.body", "inner.head", "inner.body", "probe", "probe.next", "advance", "emit",
            "finish")}
        b.branch(blocks["outer.head"])

        # while pos < n: match from the root at pos
        b.position_at_end(blocks["outer.head"])
        p = b.load(pos)
        b.cbranch(b.icmp_signed("<", p, n), blocks["outer.body"], blocks["finish"])

        b.position_at_end(blocks["outer.body"])
        b.store(_c32(0), node)
        b.store(p, j)
        b.store(i64(-1), best)
        b.store(b.add(p, i64(1)), best_end)
        b.branch(blocks["inner.head"])

        # while j < n: follow the edge (node, data[j]) if there is one
        b.position_at_end(blocks["inner.head"])
        jv = b.load(j)
        b.cbranch(b.icmp_signed("<", jv, n), blocks["inner.body"], blocks["emit"])

        b.position_at_end(blocks["inner.body"])
        h = b.add(b.load(node), b.mul(b.zext(load_at(b, data, jv), I32), _c32(TRIE_HASH_MULT)))
        b.store(b.lshr(b.zext(h, I64), shift), slot)
        b.branch(blocks["probe"])

        b.position_at_end(blocks["probe"])
        s = b.load(slot)
        entry = load_at(b, table, s)
        entry_hash = b.trunc(b.lshr(entry, i64(32)), I32)
        b.cbranch(b.icmp_unsigned("==", entry_hash, h), blocks["advance"], blocks["probe.next"])

        b.position_at_end(blocks["probe.next"])
        b.store(b.and_(b.add(s, i64(1)), mask), slot)
        b.cbranch(b.icmp_unsigned("==", entry_hash, _c32(TRIE_EMPTY)), blocks["emit"], blocks["probe"])

        b.position_at_end(blocks["advance"])
        b.store(b.trunc(entry, I32), node)
        j_next = b.add(jv, i64(1))
        b.store(j_next, j)
        tok = b.sext(load_at(b, slot_token, s), I64)
        ends_token = b.icmp_signed(">=", tok, i64(0))
        b.store(b.select(ends_token, tok, b.load(best)), best)
        b.store(b.select(ends_token, j_next, b.load(best_end)), best_end)
        b.branch(blocks["inner.head"])

        # emit the longest token found and continue after it
        b.position_at_end(blocks["emit"])
        no = b.load(n_out)
        store_at(b, b.trunc(b.load(best), I32), out, no)
        b.store(b.add(no, i64(1)), n_out)
        b.store(b.load(best_end), pos)
        b.branch(blocks["outer.head"])

        b.position_at_end(blocks["finish"])
        b.ret(b.load(n_out))

    fnty = ir.FunctionType(I64, [I8P, I64, I64P, I32P, I64, I32P])
    return get_or_define(module, TRIE_FN, fnty, build, linkage="external")


def compile_trie_kernel() -> tuple[CompiledModule, ctypes._CFuncPtr]:
    """Compile (or load from the object cache) the kernel; keep the module alive while calling."""
    return shared_module("trie", _trie_module), shared_function("trie", _trie_module, TRIE_FN, TRIE_CTYPE)


def _trie_module() -> ir.Module:
    module = ir.Module(name="trie")
    emit_trie_longest_match(module)
    return module


class TrieMatcher:
    """Greedy longest match of byte strings against a vocabulary of (id, bytes) tokens.

    A later token with the same bytes as an earlier one replaces it. `missing_bytes` lists the
    single bytes that are not tokens; `encode` must not be called unless it is empty.
    """

    def __init__(self, tokens: Iterable[tuple[int, bytes]]) -> None:
        edges: dict[int, int] = {}  # node * 256 + byte -> child node
        node_token = [-1]
        for token_id, data in tokens:
            node = 0
            for byte in data:
                key = node << 8 | byte
                child = edges.get(key)
                if child is None:
                    child = edges[key] = len(node_token)
                    node_token.append(-1)
                node = child
            node_token[node] = token_id
        if len(node_token) > MAX_NODES:
            raise ValueError(f"vocabulary too large for the byte trie ({len(node_token)} nodes)")
        self.missing_bytes = [byte for byte in range(256) if node_token[edges.get(byte, 0)] < 0]
        keys = np.fromiter(edges.keys(), dtype=np.int64, count=len(edges))
        children = np.fromiter(edges.values(), dtype=np.int64, count=len(edges))
        self.table, self.slot_token, self.shift = build_table(keys, children, np.asarray(node_token, np.int32))
        self._compiled, self._kernel = compile_trie_kernel()
        self._args = (self.table.ctypes.data, self.slot_token.ctypes.data, self.shift)

    def encode(self, data: bytes) -> list[int]:
        """Token ids of `data`, longest match first."""
        if not data:
            return []
        out = np.empty(len(data), dtype=np.int32)
        n_out = self._kernel(data, len(data), *self._args, out.ctypes.data)
        return out[:n_out].tolist()


def build_table(
    keys: np.ndarray, children: np.ndarray, node_token: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """The kernel's (table, slot_token, shift) for edges `keys` (node * 256 + byte) -> `children`.

    Load factor at most 1/2. Filled in rounds: in round r every edge still waiting tries slot
    (hash >> shift) + r, and of the edges that meet at an empty slot the first one takes it, so every
    slot between an edge's home and its place is occupied, as linear probing requires.
    """
    bits = max(8, (2 * len(keys) - 1).bit_length())
    size, shift = 1 << bits, 32 - bits
    hashes = (keys * TRIE_HASH_MULT) & 0xFFFFFFFF
    entries = (hashes << 32) | ((children * (256 * TRIE_HASH_MULT)) & 0xFFFFFFFF)
    table = np.full(size, TRIE_EMPTY << 32, dtype=np.uint64)
    slot_token = np.full(size, -1, dtype=np.int32)
    waiting = np.arange(len(keys))
    slot = hashes >> shift
    while waiting.size:
        free = (table[slot] >> np.uint64(32)) == TRIE_EMPTY
        taken, first = np.unique(slot[free], return_index=True)
        winners = np.flatnonzero(free)[first]
        table[taken] = entries[waiting[winners]].astype(np.uint64)
        slot_token[taken] = node_token[children[waiting[winners]]]
        keep = np.ones(waiting.size, dtype=bool)
        keep[winners] = False
        waiting, slot = waiting[keep], (slot[keep] + 1) & (size - 1)
    return table, slot_token, shift
