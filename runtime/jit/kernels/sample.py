"""The per-token sampling step in IR: penalties, bans, softmax, top-p, top-k, temperature and the draw.

    kernels = sample_kernels()
    token = kernels.sample(logits_ptr, n, scratch_ptr, n_pad, touched_ptr, n_touched, counts_ptr,
                           presence, frequency, banned_ptr, n_banned, temperature, top_p, top_k, u)
    kernels.record(touched_ptr, n_touched_ptr, counts_ptr, token, weight, decay)

`rwkv_sample` does all the work over the vocabulary in one call (ctypes releases the GIL), on
<8 x float> vectors, four per loop iteration, without sorting:

1. copy the logits into `scratch` (the caller's array is never written), refusing NaN or +inf, and
   find their maximum; subtract `presence + counts[t] * frequency` from every token t in `touched`
   (the tokens generated so far) and set banned tokens to -inf; the maximum m is recomputed only
   if one of those tokens could have held it;
2. greedy (temperature 0, top_p 0 or top_k 1): among the tokens whose logit equals m, take the
   floor(u·count)-th (a single maximum in practice);
3. without top-p and top-k, the weights are exp((x - m)/T) straight away (0 where exp(x - m)
   underflows); otherwise e = exp(x - m) and S = Σ e (double);
4. top-k threshold: the largest value v with #{e >= v} >= k; top-p threshold: the largest value v
   with Σ{e >= v} >= top_p·S, which is exactly the official cutoff (the probability at the first
   position where the cumulative sum of the sorted probabilities reaches top_p), ties included.
   Both are found by bisection on the float bit patterns (their order is the order of non-negative
   floats) in [lower bound, 1.0]: each pass sums the candidates above the midpoint; once the
   candidates shrink to a quarter they are compacted into a buffer, and at most 32 are sorted to
   finish. For top-p, (S - top_p·S)/(2n) is a valid lower bound (the tokens below it hold less than
   half the mass that top-p drops), which skips the first passes;
5. weights w = e^(1/T) = exp((x - m)/T) for tokens with e >= max(thresholds) and e > 0 (the exp is
   skipped for vectors with no kept token), W = Σ w; the token is the first index whose running sum
   of w exceeds u·W (scanned 32 at a time, then one by one inside the block).

It returns the token id, NO_TOKEN (-1) when every token is banned or -inf, BAD_LOGITS (-2) when the
logits hold NaN or +inf. `scratch` holds 3·n_pad floats, n_pad = `padded_length(n)`.

`rwkv_penalty_record` keeps the penalty counts: `counts` is a dense double array over the vocabulary
with -1 for tokens never generated, `touched` lists the generated tokens. It multiplies every count
by `decay`, then adds `weight` to the new token's count (appending it to `touched` the first time).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

from llvmlite import ir

from runtime.jit.engine import CompiledModule
from runtime.jit.irkit import F32, F32P, I1, I8, I32, I32P, I64, I64P, VOID, counted_loop, f32, i64, intrinsic
from runtime.jit.kernels.irhelpers import V8F, V8I32, Var, load_vec, shuffle, splat, splat_const, store_vec
from runtime.jit.shared import shared_function, shared_module

SAMPLE_FN = "rwkv_sample"
RECORD_FN = "rwkv_penalty_record"
NO_TOKEN = -1
BAD_LOGITS = -2
LANES = 8
UNROLL = 4  # vectors per loop iteration, each with its own accumulators (short dependency chains)
BLOCK = LANES * UNROLL
SMALL = 32  # candidates sorted directly once the bisection is down to this many
ONE_BITS = 0x3F800000  # bits of 1.0f; e = exp(x - m) is clamped to <= 1.0

F64 = ir.DoubleType()
F64P = F64.as_pointer()
V8D = ir.VectorType(F64, LANES)
V8B = ir.VectorType(I1, LANES)

# exp(x) on <8 x float>: range reduction by ln 2 (split in two for accuracy), a degree-7 Taylor
# polynomial, and 2^n set through the exponent bits; below EXP_MIN the result is 0.
EXP_MIN = -87.33654
EXP_MAX = 88.0
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_TAYLOR = [1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0]  # highest degree first

SAMPLE_CTYPE = ctypes.CFUNCTYPE(
    ctypes.c_int64,
    ctypes.c_void_p, ctypes.c_int64,  # logits, n
    ctypes.c_void_p, ctypes.c_int64,  # scratch, n_pad
    ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,  # touched, n_touched, counts
    ctypes.c_double, ctypes.c_double,  # presence, frequency
    ctypes.c_void_p, ctypes.c_int64,  # banned, n_banned
    ctypes.c_double, ctypes.c_double, ctypes.c_int64, ctypes.c_double,  # temperature, top_p, top_k, u
)
RECORD_CTYPE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_double
)


def padded_length(n: int) -> int:
    """n rounded up to a whole number of loop blocks (BLOCK floats)."""
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _c32(v: int) -> ir.Constant:
    return ir.Constant(I32, v)


def _f64(v: float) -> ir.Constant:
    return ir.Constant(F64, v)


def _vf(v: float) -> ir.Constant:
    return splat_const(V8F, v)


def _vcall(b: ir.IRBuilder, name: str, ty: ir.Type, args: list[ir.Value]) -> ir.Value:
    return b.call(intrinsic(b.module, name, ty, [a.type for a in args]), args)


def _vexp(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e^x for <8 x float> (about 2 ulp; 0 below EXP_MIN)."""
    xc = _vcall(b, "llvm.minnum.v8f32", V8F, [_vcall(b, "llvm.maxnum.v8f32", V8F, [x, _vf(EXP_MIN)]), _vf(EXP_MAX)])
    n = _vcall(b, "llvm.rint.v8f32", V8F, [b.fmul(xc, _vf(_LOG2E))])
    fused = ("contract",)
    r = b.fsub(xc, b.fmul(n, _vf(_LN2_HI), flags=fused), flags=fused)
    r = b.fsub(r, b.fmul(n, _vf(_LN2_LO), flags=fused), flags=fused)
    p = _vf(_TAYLOR[0])
    for c in _TAYLOR[1:]:
        p = b.fadd(b.fmul(p, r, flags=("contract",)), _vf(c), flags=("contract",))
    bits = b.shl(b.add(b.fptosi(n, V8I32), splat_const(V8I32, 127)), splat_const(V8I32, 23))
    y = b.fmul(p, b.bitcast(bits, V8F))
    return b.select(b.fcmp_ordered("<", x, _vf(EXP_MIN)), _vf(0.0), y)


def _halves(b: ir.IRBuilder, v: ir.Value, op) -> ir.Value:
    """Reduce a vector of 8 lanes to a scalar with `op` (a tree: two vector steps, one scalar)."""
    width = v.type.count
    while width > 2:
        width //= 2
        v = op(shuffle(b, v, v, list(range(width))), shuffle(b, v, v, list(range(width, 2 * width))))
    return op(b.extract_element(v, _c32(0)), b.extract_element(v, _c32(1)))


def _hsum_d(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    return _halves(b, v, lambda x, y: b.fadd(x, y))


def _hsum_i(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    return b.zext(_halves(b, v, lambda x, y: b.add(x, y)), I64)


def _hmax(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    def op(x: ir.Value, y: ir.Value) -> ir.Value:
        name = f"llvm.maxnum.v{x.type.count}f32" if isinstance(x.type, ir.VectorType) else "llvm.maxnum.f32"
        return _vcall(b, name, x.type, [x, y])

    return _halves(b, v, op)


def _mask_bits(b: ir.IRBuilder, cond: ir.Value) -> ir.Value:
    """<8 x i1> → i32 with bit k set for lane k."""
    return b.zext(b.bitcast(cond, I8), I32)


def _cttz(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    return b.call(intrinsic(b.module, "llvm.cttz.i32", I32, [I32, I1]), [v, ir.Constant(I1, 1)])


def _ctpop(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    return b.call(intrinsic(b.module, "llvm.ctpop.i32", I32, [I32]), [v])


def _bits_to_float(b: ir.IRBuilder, bits: ir.Value) -> ir.Value:
    return b.bitcast(bits, F32)


def _while(b: ir.IRBuilder, name: str):
    """Blocks for `while (cond) body`: returns (head, body, done); the caller fills head with a
    cbranch to body/done, ends body with a branch to head, and continues in done."""
    fn = b.function
    return fn.append_basic_block(f"{name}.head"), fn.append_basic_block(f"{name}.body"), \
        fn.append_basic_block(f"{name}.done")


def _reduce_loop(b: ir.IRBuilder, stop: ir.Value, name: str, inits: list[ir.Constant],
                 step: Callable[[ir.Value], list[ir.Value]],
                 combine: list[Callable[[ir.Value, ir.Value], ir.Value]]) -> list[ir.Value]:
    """for i in [0, stop) by BLOCK: acc_k = combine_k(acc_k, step(i + 8·j)[k]) for j < UNROLL, with
    UNROLL independent copies of every accumulator, merged at the end. `stop` is a multiple of BLOCK."""
    copies = [[Var(b, init, f"{name}.acc{k}.{j}") for k, init in enumerate(inits)] for j in range(UNROLL)]
    with counted_loop(b, i64(0), stop, BLOCK, name=name) as i:
        for j in range(UNROLL):
            values = step(b.add(i, i64(j * LANES)) if j else i)
            for k, value in enumerate(values):
                copies[j][k].set(combine[k](copies[j][k].get(), value))
    merged = []
    for k in range(len(inits)):
        parts = [copies[j][k].get() for j in range(UNROLL)]
        while len(parts) > 1:
            parts = [combine[k](parts[a], parts[a + 1]) for a in range(0, len(parts), 2)]
        merged.append(parts[0])
    return merged


def _emit_select(module: ir.Module) -> ir.Function:
    """i32 rwkv_sample_select(float* src, i64 len, float* cand, i32 count_mode, double target, i32 lo):
    the bits of the largest value v >= bits lo with G(v) >= target, where G(v) is the number
    (count_mode) or the sum of the elements >= v; lo itself when no element qualifies. `src` holds
    `len` values in [0, 1] (a multiple of 8, padding negative); `cand` (len floats) may be `src`."""
    fnty = ir.FunctionType(I32, [F32P, I64, F32P, I32, F64, I32])
    fn = ir.Function(module, fnty, "rwkv_sample_select")
    fn.linkage = "internal"
    src0, len0, cand, count_mode_i, target, lo0 = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    count_mode = b.icmp_unsigned("!=", count_mode_i, _c32(0))
    lo = Var(b, lo0, "lo")
    hi = Var(b, _c32(ONE_BITS + 1), "hi")
    base = Var(b, _f64(0.0), "base")
    src = Var(b, src0, "src")
    length = Var(b, len0, "len")
    k = Var(b, i64(0), "k")
    mask = Var(b, _c32(0), "mask")

    head, body, done = _while(b, "bisect")
    b.branch(head)
    b.position_at_end(head)
    b.cbranch(b.icmp_signed(">", b.sub(hi.get(), lo.get()), _c32(1)), body, done)

    b.position_at_end(body)
    lo_v, hi_v = lo.get(), hi.get()
    mid = b.add(lo_v, b.lshr(b.sub(hi_v, lo_v), _c32(1)))
    flo, fmid, fhi = (splat(b, _bits_to_float(b, x)) for x in (lo_v, mid, hi_v))
    s = src.get()

    def step(i: ir.Value) -> list[ir.Value]:
        v = load_vec(b, s, i)
        ge_mid = b.fcmp_ordered(">=", v, fmid)
        up = b.and_(ge_mid, b.fcmp_ordered("<", v, fhi))
        low = b.and_(b.fcmp_ordered(">=", v, flo), b.not_(ge_mid))
        amount = b.select(count_mode, splat_const(V8D, 1.0), b.fpext(v, V8D))
        return [b.select(up, amount, splat_const(V8D, 0.0)), b.zext(up, V8I32), b.zext(low, V8I32)]

    sums = _reduce_loop(b, length.get(), "pass", [ir.Constant(V8D, None), ir.Constant(V8I32, None),
                                                  ir.Constant(V8I32, None)], step, [b.fadd, b.add, b.add])
    g = _hsum_d(b, sums[0])
    n_up, n_low = _hsum_i(b, sums[1]), _hsum_i(b, sums[2])
    upper_ok = b.fcmp_ordered(">=", b.fadd(base.get(), g), target)
    base.set(b.select(upper_ok, base.get(), b.fadd(base.get(), g)))
    lo.set(b.select(upper_ok, mid, lo_v))
    hi.set(b.select(upper_ok, hi_v, mid))
    left = b.select(upper_ok, n_up, n_low)
    small = b.icmp_signed("<=", left, i64(SMALL))
    shrunk = b.icmp_signed("<=", b.mul(left, i64(4)), length.get())
    compact_bb = fn.append_basic_block("compact")
    b.cbranch(b.or_(small, shrunk), compact_bb, head)

    # Keep only the values in [lo, hi), in cand (in place when src is cand: writes trail reads).
    b.position_at_end(compact_bb)
    flo, fhi = (splat(b, _bits_to_float(b, x)) for x in (lo.get(), hi.get()))
    k.set(i64(0))
    with counted_loop(b, i64(0), length.get(), LANES, name="compact") as i:
        v = load_vec(b, s, i)
        inside = b.and_(b.fcmp_ordered(">=", v, flo), b.fcmp_ordered("<", v, fhi))
        mask.set(_mask_bits(b, inside))
        lanes_head, lanes_body, lanes_done = _while(b, "lanes")
        b.branch(lanes_head)
        b.position_at_end(lanes_head)
        b.cbranch(b.icmp_unsigned("!=", mask.get(), _c32(0)), lanes_body, lanes_done)
        b.position_at_end(lanes_body)
        m = mask.get()
        value = b.extract_element(v, _cttz(b, m))
        b.store(value, b.gep(cand, [k.get()], inbounds=True))
        k.set(b.add(k.get(), i64(1)))
        mask.set(b.and_(m, b.sub(m, _c32(1))))
        b.branch(lanes_head)
        b.position_at_end(lanes_done)
    count = k.get()
    padded = b.and_(b.add(count, i64(BLOCK - 1)), i64(-BLOCK))
    with counted_loop(b, count, padded, name="pad") as i:
        b.store(f32(-1.0), b.gep(cand, [i], inbounds=True))
    src.set(cand)
    length.set(padded)
    finish_bb = fn.append_basic_block("finish")
    b.cbranch(b.icmp_signed("<=", count, i64(SMALL)), finish_bb, head)

    # At most SMALL candidates: sort them (descending) and walk down from the top.
    b.position_at_end(finish_bb)
    j = Var(b, i64(0), "j")
    with counted_loop(b, i64(1), count, name="sort") as a:
        key = b.load(b.gep(cand, [a], inbounds=True))
        j.set(b.sub(a, i64(1)))
        shift_head, shift_body, shift_done = _while(b, "shift")
        b.branch(shift_head)
        b.position_at_end(shift_head)
        jv = j.get()
        test_bb = fn.append_basic_block("shift.test")
        b.cbranch(b.icmp_signed(">=", jv, i64(0)), test_bb, shift_done)
        b.position_at_end(test_bb)
        cur = b.load(b.gep(cand, [jv], inbounds=True))
        b.cbranch(b.fcmp_ordered("<", cur, key), shift_body, shift_done)
        b.position_at_end(shift_body)
        b.store(cur, b.gep(cand, [b.add(jv, i64(1))], inbounds=True))
        j.set(b.sub(jv, i64(1)))
        b.branch(shift_head)
        b.position_at_end(shift_done)
        b.store(key, b.gep(cand, [b.add(j.get(), i64(1))], inbounds=True))
    walk = Var(b, base.get(), "walk")
    with counted_loop(b, i64(0), count, name="walk") as a:
        value = b.load(b.gep(cand, [a], inbounds=True))
        walk.set(b.fadd(walk.get(), b.select(count_mode, _f64(1.0), b.fpext(value, F64))))
        with b.if_then(b.fcmp_ordered(">=", walk.get(), target)):
            b.ret(b.bitcast(value, I32))
    b.ret(lo.get())

    b.position_at_end(done)
    b.ret(lo.get())
    return fn


def _emit_sample(module: ir.Module) -> ir.Function:
    select = _emit_select(module)
    fnty = ir.FunctionType(I64, [F32P, I64, F32P, I64, I32P, I64, F64P, F64, F64, I32P, I64, F64, F64, I64, F64])
    fn = ir.Function(module, fnty, SAMPLE_FN)
    (logits, n, scratch, n_pad, touched, n_touched, counts, presence, frequency, banned, n_banned,
     temperature, top_p, top_k, u) = fn.args
    for arg, name in zip(fn.args, ("logits", "n", "scratch", "n_pad", "touched", "n_touched", "counts", "presence",
                                   "frequency", "banned", "n_banned", "temperature", "top_p", "top_k", "u"),
                         strict=True):
        arg.name = name
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    x = scratch
    e = b.gep(scratch, [n_pad], inbounds=True)
    cand = b.gep(scratch, [b.mul(n_pad, i64(2))], inbounds=True)
    inf = float("inf")

    # 1. copy, refusing NaN and +inf, and find the maximum on the way
    n_main = b.and_(n, i64(-BLOCK))

    def copy_step(i: ir.Value) -> list[ir.Value]:
        v = load_vec(b, logits, i)
        store_vec(b, v, x, i)
        is_bad = b.or_(b.fcmp_unordered("uno", v, v), b.fcmp_ordered("==", v, _vf(inf)))
        return [b.zext(is_bad, V8I32), v]

    def vmax(p: ir.Value, q: ir.Value) -> ir.Value:
        return b.select(b.fcmp_ordered(">", p, q), p, q)

    bad, top = _reduce_loop(b, n_main, "copy", [ir.Constant(V8I32, None), _vf(-inf)], copy_step, [b.or_, vmax])
    bad_any = Var(b, _halves(b, bad, lambda p, q: b.or_(p, q)), "bad_any")
    raw_max = Var(b, _hmax(b, top), "raw_max")
    with counted_loop(b, n_main, n, name="tail") as i:
        v = b.load(b.gep(logits, [i], inbounds=True))
        b.store(v, b.gep(x, [i], inbounds=True))
        is_bad = b.or_(b.fcmp_unordered("uno", v, v), b.fcmp_ordered("==", v, f32(inf)))
        bad_any.set(b.or_(bad_any.get(), b.zext(is_bad, I32)))
        raw_max.set(vmax(v, raw_max.get()))
    with counted_loop(b, n, n_pad, name="padx") as i:
        b.store(f32(-inf), b.gep(x, [i], inbounds=True))
    with b.if_then(b.icmp_unsigned("!=", bad_any.get(), _c32(0))):
        b.ret(i64(BAD_LOGITS))

    # penalties on generated tokens, then bans; the maximum is recomputed only when a changed
    # token may have held it
    m0 = raw_max.get()
    top_now = Var(b, m0, "max")
    recompute = Var(b, ir.Constant(I1, 0), "recompute")
    with counted_loop(b, i64(0), n_touched, name="penalty") as j:
        tok = b.sext(b.load(b.gep(touched, [j], inbounds=True)), I64)
        amount = b.fadd(presence, b.fmul(b.load(b.gep(counts, [tok], inbounds=True)), frequency))
        p = b.gep(x, [tok], inbounds=True)
        old = b.load(p)
        new = b.fptrunc(b.fsub(b.fpext(old, F64), amount), F32)
        b.store(new, p)
        recompute.set(b.or_(recompute.get(), b.fcmp_ordered(">=", old, m0)))
        top_now.set(vmax(new, top_now.get()))
    with counted_loop(b, i64(0), n_banned, name="ban") as j:
        tok = b.sext(b.load(b.gep(banned, [j], inbounds=True)), I64)
        p = b.gep(x, [tok], inbounds=True)
        recompute.set(b.or_(recompute.get(), b.fcmp_ordered(">=", b.load(p), m0)))
        b.store(f32(-inf), p)
    with b.if_then(recompute.get()):
        (again,) = _reduce_loop(b, n_pad, "max", [_vf(-inf)], lambda i: [load_vec(b, x, i)], [vmax])
        top_now.set(_hmax(b, again))
    m = top_now.get()
    with b.if_then(b.fcmp_ordered("==", m, f32(-inf))):
        b.ret(i64(NO_TOKEN))
    vm = splat(b, m)

    # 2. greedy: the floor(u·count)-th token whose logit is the maximum
    greedy = b.or_(b.or_(b.fcmp_unordered("<=", temperature, _f64(0.0)), b.fcmp_unordered("<=", top_p, _f64(0.0))),
                   b.icmp_signed("==", top_k, i64(1)))
    with b.if_then(greedy):
        (ties,) = _reduce_loop(b, n_pad, "ties", [ir.Constant(V8I32, None)],
                               lambda i: [b.zext(b.fcmp_ordered("==", load_vec(b, x, i), vm), V8I32)], [b.add])
        n_ties = _hsum_i(b, ties)
        r0 = b.fptosi(b.fmul(u, b.sitofp(n_ties, F64)), I64)
        r0 = b.select(b.icmp_signed(">=", r0, n_ties), b.sub(n_ties, i64(1)), r0)
        r = Var(b, b.select(b.icmp_signed("<", r0, i64(0)), i64(0), r0), "rank")
        bits = Var(b, _c32(0), "tie_bits")
        with counted_loop(b, i64(0), n_pad, LANES, name="find") as i:
            bits.set(_mask_bits(b, b.fcmp_ordered("==", load_vec(b, x, i), vm)))
            here = b.zext(_ctpop(b, bits.get()), I64)
            with b.if_then(b.icmp_signed("<", r.get(), here)):
                lane_head, lane_body, lane_done = _while(b, "tie")
                b.branch(lane_head)
                b.position_at_end(lane_head)
                b.cbranch(b.icmp_signed(">", r.get(), i64(0)), lane_body, lane_done)
                b.position_at_end(lane_body)
                bv = bits.get()
                bits.set(b.and_(bv, b.sub(bv, _c32(1))))
                r.set(b.sub(r.get(), i64(1)))
                b.branch(lane_head)
                b.position_at_end(lane_done)
                b.ret(b.add(i, b.zext(_cttz(b, bits.get()), I64)))
            r.set(b.sub(r.get(), here))
        b.ret(i64(NO_TOKEN))

    inv_t = splat(b, b.fptrunc(b.fdiv(_f64(1.0), temperature), F32))
    wsum = Var(b, _f64(0.0), "wsum")
    use_k = b.and_(b.icmp_signed(">", top_k, i64(1)), b.icmp_signed("<", top_k, n))
    use_p = b.fcmp_ordered("<", top_p, _f64(1.0))
    with b.if_else(b.or_(use_k, use_p)) as (cutting, whole):
        with whole:  # 3'. nothing to cut: weights exp((x - m)/T) straight away, 0 where e would be 0
            def direct_step(i: ir.Value) -> list[ir.Value]:
                d = b.fsub(load_vec(b, x, i), vm)
                w = b.select(b.fcmp_ordered(">=", d, _vf(EXP_MIN)), _vexp(b, b.fmul(d, inv_t)), _vf(0.0))
                store_vec(b, w, e, i)
                return [b.fpext(w, V8D)]

            (acc,) = _reduce_loop(b, n_pad, "direct", [ir.Constant(V8D, None)], direct_step, [b.fadd])
            wsum.set(_hsum_d(b, acc))
        with cutting:
            # 3. e = exp(x - m) <= 1, S = Σ e
            def exp_step(i: ir.Value) -> list[ir.Value]:
                ev = _vcall(b, "llvm.minnum.v8f32", V8F, [_vexp(b, b.fsub(load_vec(b, x, i), vm)), _vf(1.0)])
                store_vec(b, ev, e, i)
                return [b.fpext(ev, V8D)]

            (acc,) = _reduce_loop(b, n_pad, "exp", [ir.Constant(V8D, None)], exp_step, [b.fadd])
            total = _hsum_d(b, acc)

            # 4. thresholds (bit patterns of the smallest kept e)
            cut = Var(b, _c32(0), "cut")
            with b.if_then(use_k):
                cut.set(b.call(select, [e, n_pad, cand, _c32(1), b.sitofp(top_k, F64), _c32(0)]))
            with b.if_then(use_p):
                target = b.fmul(top_p, total)
                bound = b.fmul(b.fdiv(b.fsub(total, target), b.sitofp(n, F64)), _f64(0.5))
                bound_bits = b.bitcast(b.fptrunc(bound, F32), I32)
                c = cut.get()
                start = b.select(b.icmp_signed(">", bound_bits, c), bound_bits, c)
                cut.set(b.call(select, [e, n_pad, cand, _c32(0), target, start]))
            fcut = splat(b, _bits_to_float(b, cut.get()))

            # 5. tempered weights of the kept tokens, then the draw
            plain = b.fcmp_ordered("==", temperature, _f64(1.0))
            with b.if_else(plain) as (then, otherwise):
                for tempered in (False, True):
                    with (otherwise if tempered else then):
                        def weight_step(i: ir.Value, tempered: bool = tempered) -> list[ir.Value]:
                            ev = load_vec(b, e, i)
                            keep = b.and_(b.fcmp_ordered(">=", ev, fcut), b.fcmp_ordered(">", ev, _vf(0.0)))
                            if tempered:  # exp only for vectors with a kept token (few, with top-p or top-k)
                                with b.if_else(b.icmp_unsigned("!=", _mask_bits(b, keep), _c32(0))) as (some, none):
                                    with some:
                                        w_some = _vexp(b, b.fmul(b.fsub(load_vec(b, x, i), vm), inv_t))
                                        w_some = b.select(keep, w_some, _vf(0.0))
                                        from_some = b.block
                                    with none:
                                        from_none = b.block
                                w = b.phi(V8F)
                                w.add_incoming(w_some, from_some)
                                w.add_incoming(_vf(0.0), from_none)
                            else:
                                w = b.select(keep, ev, _vf(0.0))
                            store_vec(b, w, e, i)
                            return [b.fpext(w, V8D)]

                        (acc,) = _reduce_loop(b, n_pad, "weights", [ir.Constant(V8D, None)], weight_step, [b.fadd])
                        wsum.set(_hsum_d(b, acc))
    point = b.fmul(u, wsum.get())
    run = Var(b, _f64(0.0), "run")
    with counted_loop(b, i64(0), n_pad, BLOCK, name="draw") as i:
        parts = [b.fpext(load_vec(b, e, b.add(i, i64(j * LANES))), V8D) for j in range(UNROLL)]
        block = _hsum_d(b, b.fadd(b.fadd(parts[0], parts[1]), b.fadd(parts[2], parts[3])))
        after = b.fadd(run.get(), block)
        with b.if_else(b.fcmp_ordered(">", after, point)) as (then, otherwise):
            with then, counted_loop(b, i64(0), i64(BLOCK), name="lane") as lane:
                idx = b.add(i, lane)
                w = b.fpext(b.load(b.gep(e, [idx], inbounds=True)), F64)
                run.set(b.fadd(run.get(), w))
                hit = b.and_(b.fcmp_ordered(">", w, _f64(0.0)), b.fcmp_ordered(">", run.get(), point))
                with b.if_then(hit):
                    b.ret(idx)
            with otherwise:
                run.set(after)
    # rounding left the point past the last running sum: the last token with weight
    last = Var(b, b.sub(n, i64(1)), "last")
    back_head, back_body, back_done = _while(b, "back")
    b.branch(back_head)
    b.position_at_end(back_head)
    li = last.get()
    check_bb = fn.append_basic_block("back.check")
    b.cbranch(b.icmp_signed(">=", li, i64(0)), check_bb, back_done)
    b.position_at_end(check_bb)
    positive = b.fcmp_ordered(">", b.load(b.gep(e, [li], inbounds=True)), f32(0.0))
    found_bb = fn.append_basic_block("back.found")
    b.cbranch(positive, found_bb, back_body)
    b.position_at_end(found_bb)
    b.ret(li)
    b.position_at_end(back_body)
    last.set(b.sub(li, i64(1)))
    b.branch(back_head)
    b.position_at_end(back_done)
    b.ret(i64(NO_TOKEN))
    return fn


def _emit_record(module: ir.Module) -> ir.Function:
    fnty = ir.FunctionType(VOID, [I32P, I64P, F64P, I64, F64, F64])
    fn = ir.Function(module, fnty, RECORD_FN)
    touched, n_touched_p, counts, token, weight, decay = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    n_touched = b.load(n_touched_p)
    with counted_loop(b, i64(0), n_touched, name="decay") as j:
        p = b.gep(counts, [b.sext(b.load(b.gep(touched, [j], inbounds=True)), I64)], inbounds=True)
        b.store(b.fmul(b.load(p), decay), p)
    p = b.gep(counts, [token], inbounds=True)
    old = b.load(p)
    with b.if_else(b.fcmp_ordered("<", old, _f64(0.0))) as (first, again):
        with first:
            b.store(b.trunc(token, I32), b.gep(touched, [n_touched], inbounds=True))
            b.store(b.add(n_touched, i64(1)), n_touched_p)
            b.store(weight, p)
        with again:
            b.store(b.fadd(old, weight), p)
    b.ret_void()
    return fn


def build_module() -> ir.Module:
    """A module with the external `rwkv_sample` and `rwkv_penalty_record`."""
    module = ir.Module(name="sample")
    _emit_sample(module)
    _emit_record(module)
    return module


@dataclass
class SampleKernels:
    """The compiled sampling functions as ctypes callables (keep this object alive while calling)."""

    compiled: CompiledModule
    sample: ctypes._CFuncPtr
    record: ctypes._CFuncPtr


def sample_kernels() -> SampleKernels:
    """Compile (or load from the object cache) the sampling kernels, once per process."""
    return SampleKernels(shared_module("sample", build_module),
                         shared_function("sample", build_module, SAMPLE_FN, SAMPLE_CTYPE),
                         shared_function("sample", build_module, RECORD_FN, RECORD_CTYPE))
