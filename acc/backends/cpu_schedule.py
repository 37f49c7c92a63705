"""Default schedules for CPU targets: what a build runs where no tuned schedule applies.

Without them TVM lowers every operator to its naive loop nest: one thread, no register reuse,
10-100x slower than onnxruntime. Convolutions are built in NHWC (see `compile.prepare`) and get a
register-blocked direct kernel: a patch of output pixels times up to six vectors of output
channels is kept in registers while the reduction runs over (kh, kw, input channel); each step
loads the weight vectors once, broadcasts one input value per pixel and issues pixels x vectors
FMAs. The epilogue (bias, activation, residual add) is computed on the tile as it is written.
Depthwise convs pad inside their parallel loop; a dense conv whose output count no small vector
divides, or only a vector narrower than a register, is computed at a padded count
(`pad_conv_channels`, a graph rewrite before fusion).
Everything else (padding, layout transposes, pooling, elementwise) runs in parallel over its
outer loops with the innermost loop vectorised when the channel count allows; pooling and other
reductions over a window of NHWC pixels run on vectors of channels. A one-row dense layer (a
classifier's Gemm) gets a vector kernel along its outputs; other dense layers and reductions use
TVM's own CPU rules. A tuned schedule from a database always wins.
"""

from __future__ import annotations

from dataclasses import dataclass

CONV_BLOCKS = ("conv2d_nhwc", "group_conv2d_nhwc")
# Raised whenever the kernels change: tuning databases measure the new default once more
# (`tune.DEFAULT_SCHEDULE_VERSIONS`) instead of replaying the old one they hold.
VERSION = 5


@dataclass(frozen=True)
class VectorUnit:
    lanes: int  # float32 lanes in one vector register
    registers: int  # vector registers the kernel may fill with accumulators, weights and inputs

    @classmethod
    def of(cls, target) -> "VectorUnit":
        from tvm.target import codegen

        try:
            bits = int(codegen.llvm_get_vector_width(target))
        except Exception:  # noqa: BLE001 - an LLVM that cannot answer: assume 128-bit vectors
            bits = 128
        lanes = max(bits // 32, 1)
        triple = str(target.attrs.get("mtriple", ""))
        # x86 before AVX-512 has 16 vector registers; AVX-512 and AArch64 have 32.
        registers = 32 if lanes >= 16 or triple.startswith(("aarch64", "arm64")) else 16
        return cls(lanes, registers)


@dataclass(frozen=True)
class ConvTile:
    vector: int  # output channels per vector (not always a whole number of registers)
    vectors: int  # vectors of output channels in the register tile
    pixels: int  # output pixels along a row in the register tile
    rows: int = 1  # output rows in the register tile

    @property
    def accumulators(self) -> int:
        return self.rows * self.pixels * self.vectors


def _divisors(n: int, cap: int) -> list[int]:
    return [d for d in range(1, min(n, cap) + 1) if n % d == 0]


WEIGHT_TILE_BYTES = 256 * 1024  # one channel tile's packed weights: kept within a core's L2


def _divisor_vector(channels: int, unit: VectorUnit) -> int:
    """The widest vector from 4 lanes to one register that divides `channels` (0: none does)."""
    return max((v for v in range(4, unit.lanes + 1) if channels % v == 0), default=0)


# Accumulators in a register tile of whole vectors on AVX-512: 24 leaves room for up to 6 weight
# vectors and the broadcast input (16 ran ResNet-18's 48-352-channel convs 5-20 % slower). NEON
# keeps 16 until it is measured on hardware (qemu timings say nothing about register pressure).
BLOCKED_ACCUMULATORS = 24
NEON_ACCUMULATORS = 16


def _blocked_tile(channels: int, width: int, height: int, reduction: int, unit: VectorUnit) -> ConvTile:
    """The tile for a dense conv whose channels are whole registers, on a 32-register unit.

    Each reduction step loads `vectors` weight registers and broadcasts one input per pixel for
    vectors x pixels FMAs: the tile that does most FMAs per load (vectors x P / (vectors + P), P
    the pixels of rows x columns) wins, then more accumulators, then the squarer patch (a 2x4 patch
    of a 3x3 conv reads 24 inputs for 8 outputs, a row of 8 reads 30). The tile's packed weights
    stay within an L2 share (WEIGHT_TILE_BYTES), except that where one vector would be all that
    fits (load-bound: 8 loads per 7 FMAs at 7 pixels) two may take up to four shares (256 channels
    at 8x8, 512 at 7x7). Where two vectors' weights overflow a share and the whole map fits one
    tile (512 channels at 4x4), one vector covers the whole map: every weight is read once.
    Measured per conv against the 16-accumulator rule: 48->48 at 32x32 1.22x, 96->96 at 16x16
    1.12x, 256->256 at 8x8 1.09x, 64->64 at 8x8 1.25x, never more than 3 % behind the best of ~20
    tiles except 64->128 at 16x16 (6 %); ImageNet ResNet-18's 64@56, 128@28, 256@14, 512@7 1.05-1.2x."""
    total = channels // unit.lanes
    bytes_per_vector = reduction * unit.lanes * 4
    most = BLOCKED_ACCUMULATORS if unit.lanes >= 16 else NEON_ACCUMULATORS

    def fits(vectors: int, pixels: int) -> bool:
        accumulators = vectors * pixels
        return accumulators <= most and accumulators + vectors + 1 <= unit.registers

    if width * height <= most and total >= 2 and 2 * bytes_per_vector > WEIGHT_TILE_BYTES \
            and fits(1, width * height):
        return ConvTile(unit.lanes, 1, width, height)

    def best(weight_limit: int, most_vectors: int = 6):
        scored = []
        for vectors in _divisors(total, most_vectors):
            if vectors > 1 and vectors * bytes_per_vector > weight_limit:
                continue
            for pixels in _divisors(width, 16):
                for rows in _divisors(height, 8):
                    count = pixels * rows
                    if fits(vectors, count):
                        key = (round(vectors * count / (vectors + count), 3), vectors * count, min(pixels, rows), rows)
                        scored.append((key, ConvTile(unit.lanes, vectors, pixels, rows)))
        return max(scored, key=lambda item: item[0])[1] if scored else ConvTile(unit.lanes, 1, 1, 1)

    tile = best(WEIGHT_TILE_BYTES)
    if tile.vectors == 1 and total >= 2:
        return best(4 * WEIGHT_TILE_BYTES, most_vectors=2)
    return tile


# Vectors of channels in a depthwise tile (each FMA loads its input: nothing is broadcast, so the
# tile sets the memory pattern rather than the loads per FMA).
DEPTHWISE_VECTORS = 5


def _depthwise_tile(channels: int, width: int, height: int, unit: VectorUnit) -> ConvTile:
    """A 2x2 patch of pixels times the most vectors up to DEPTHWISE_VECTORS that divide the
    channels. Measured inside the depthwise schedule against the row-first rule (MobileNetV2 at
    2x, ~25 tiles each): 144 channels at 16x16 1.23x, 400 at 8x8 1.14x, 672 at 4x4 1.26x, 96 at
    32x32 a tie; all channels at once (6 or 9 vectors) and one vector per tile ran slower."""
    total = channels // unit.lanes
    vectors = max(_divisors(total, DEPTHWISE_VECTORS))
    rows = max(_divisors(height, 2))
    pixels = max(_divisors(width, 2))
    return ConvTile(unit.lanes, vectors, pixels, rows)


def conv_tile(channels: int, width: int, unit: VectorUnit, height: int = 1, reduction: int = 1,
              depthwise: bool = False) -> ConvTile:
    """The register tile for `height` x `width` output pixels of `channels` channels, each the sum
    of `reduction` products (KH * KW * input channels per group).

    Channels that are whole registers on a 32-register unit: `_blocked_tile` (dense) or, on
    AVX-512, `_depthwise_tile`. Otherwise (half-width or odd counts, 16 registers, NEON depthwise):

    Each step of the reduction loads `vectors` weight vectors and one input value per pixel for
    rows x pixels x vectors FMAs. Up to 16 accumulators (12 with 16 registers; more spilled in
    measurements): pixels along the row first (contiguous inputs), then channel vectors while one
    tile's weights stay within L2, then rows, which keeps late small maps (4x4, 2x2) with 512
    channels from re-reading megabytes of weights at a few FMAs per load.
    """
    full = next((v for v in (unit.lanes, unit.lanes // 2, unit.lanes // 4) if v >= 4 and channels % v == 0), 0)
    if full == unit.lanes and unit.registers >= 32:
        if not depthwise:
            return _blocked_tile(channels, width, height, reduction, unit)
        if unit.lanes >= 16:  # measured on AVX-512 only
            return _depthwise_tile(channels, width, height, unit)
    if full:
        vector, per_vector, cap = full, 1, 8
        counts = [v for v in (4, 3, 2, 1) if channels % (v * full) == 0]
        counts = [v for v in counts if v == 1 or reduction * v * full * 4 <= WEIGHT_TILE_BYTES]
    else:
        # A count no full vector divides (a pruned 13 or 45): one vector of its largest divisor up
        # to one register wide, measured close to a round count (wider, LLVM's <30 x float> ran
        # 30x slower: ResNet-18's 90-channel convs). With no such divisor (37, 181) a predicated
        # tail: whole vectors over every channel at once, few pixels (a tail split across tiles
        # measured 10x slower).
        vector = _divisor_vector(channels, unit)
        counts, cap = [1], 8
        if not vector:
            vector, counts, cap = unit.lanes, [-(-channels // unit.lanes)], 2
        per_vector = -(-vector // unit.lanes)
    limit = 16 if unit.registers >= 32 else 12

    def fits(pixels: int, vectors: int, rows: int = 1) -> bool:
        registers = vectors * per_vector
        accumulators = rows * pixels * registers
        return accumulators + registers + 1 <= unit.registers and (accumulators <= limit or accumulators == registers)

    wide = [v for v in range(8, 1, -1) if channels % (v * vector) == 0 and fits(2, v)
            and reduction * v * vector * 4 <= WEIGHT_TILE_BYTES] if vector < unit.lanes and full else []
    wide_pixels = max((d for d in _divisors(width, cap) if wide and fits(d, wide[0])), default=1)
    if wide and wide_pixels >= 2:
        # Half-width vectors (24 or 40 channels on AVX-512): several vectors at once, 2-4 pixels
        # (one vector at 8 pixels issued a load per FMA: 96->24 1x1 ran 1.9x slower).
        vectors, pixels = wide[0], wide_pixels
    else:
        pixels = max((d for d in _divisors(width, cap) if fits(d, counts[-1])), default=1)
        vectors = next((v for v in counts if fits(pixels, v)), counts[-1])
    rows = max((r for r in _divisors(height, 8) if fits(pixels, vectors, r)), default=1)
    return ConvTile(vector, vectors, pixels, rows)


def _block_kinds(sch, block) -> str:
    return "".join("S" if iv.iter_type == 0 else "R" for iv in sch.get(block).iter_vars)


def _root_blocks(sch):
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _inline_epilogue(sch, block):
    """Inline the chain of elementwise consumers of `block` into its last one; return that one."""
    consumers = list(sch.get_consumers(block))
    if len(consumers) != 1:
        return None
    last = consumers[0]
    while True:
        nxt = list(sch.get_consumers(last))
        if len(nxt) != 1:
            return last if not nxt else None
        sch.compute_inline(last)
        last = nxt[0]


def _channel_vector(extent: int, unit: VectorUnit) -> int:
    """The vector (a register, half of one, or 4 lanes) an innermost loop of `extent` runs on; 0: none."""
    return next((v for v in (unit.lanes, unit.lanes // 2, 4) if v >= 4 and extent % v == 0), 0)


def _leading_spatial(kinds: str) -> int:
    """How many of a block's loops, outermost first, are spatial before the first reduction."""
    return len(kinds) - len(kinds.lstrip("S"))


def _parallel_outer(sch, block, unit: VectorUnit) -> None:
    """Parallel over the outer spatial loops, the innermost spatial loop vectorised if it divides."""
    loops = sch.get_loops(block)
    kinds = _block_kinds(sch, block)
    if not loops or len(kinds) != len(loops):
        return
    spatial = [lp for lp, k in zip(loops, kinds) if k == "S"]
    lead = _leading_spatial(kinds)
    if lead == len(kinds) and lead >= 2:
        vec = _channel_vector(int(sch.get(spatial[-1]).extent), unit)
        if vec:
            _, inner = sch.split(spatial[-1], [None, vec])
            sch.vectorize(inner)
        outer = loops[:lead - 1]
    else:
        outer = loops[:lead]
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _inline_plain_copies(sch, conv) -> None:
    """Inline the conv's input copies: the frontend pads every conv's input, with zero padding
    too (a 1x1 conv), and that copy of the whole input cost as much as a small conv's FMAs."""
    from tvm import ir, tirx

    for producer in sch.get_producers(conv):
        body = sch.get(producer).body
        if isinstance(body, tirx.BufferStore) and isinstance(body.value, ir.TensorLoad):
            sch.compute_inline(producer)


def schedule_conv(sch, conv, unit: VectorUnit) -> None:
    """Register-blocked direct NHWC convolution with its epilogue fused into the tile."""
    _inline_plain_copies(sch, conv)
    n, y, x, f, ry, rx, rc = sch.get_loops(conv)
    channels, width, height, kh, kw, per_group = (int(sch.get(loop).extent) for loop in (f, x, y, ry, rx, rc))
    depthwise = per_group == 1 and kh * kw > 1
    tile = conv_tile(channels, width, unit, height, kh * kw * per_group, depthwise)
    out = _inline_epilogue(sch, conv)
    padding = list(sch.get_producers(conv))
    f_outer, f_inner = sch.split(f, [None, tile.vector * tile.vectors])
    x_outer, x_inner = sch.split(x, [None, tile.pixels])
    y_outer, y_inner = sch.split(y, [None, tile.rows])
    f_vectors, f_lanes = sch.split(f_inner, [None, tile.vector])
    if depthwise:
        # Rows outermost, each iteration pads just the rows and channels it reads: a depthwise
        # conv does 9 FMAs per input value, so a separate pass over the padded copy (and the
        # other core's cache lines it then reads) cost as much as the conv.
        sch.reorder(n, y_outer, f_outer, x_outer, ry, rx, rc, y_inner, x_inner, f_vectors, f_lanes)
        outer = sch.fuse(n, y_outer, f_outer)
    else:
        # Channel tiles outermost: a thread's run of iterations shares one tile's weights, which
        # stay in cache across the rows (late 512-channel layers were weight-bandwidth bound).
        sch.reorder(n, f_outer, y_outer, x_outer, ry, rx, rc, y_inner, x_inner, f_vectors, f_lanes)
        outer = sch.fuse(n, f_outer, y_outer)
    sch.parallel(outer)
    if depthwise and len(padding) == 1:
        sch.compute_at(padding[0], outer)
        channel_loop = sch.get_loops(padding[0])[-1]
        if int(sch.get(channel_loop).extent) % tile.vector == 0:
            sch.vectorize(sch.split(channel_loop, [None, tile.vector])[1])
    accumulator = _accumulators_at(sch, conv, out, x_outer)
    sch.unroll(y_inner)
    sch.unroll(x_inner)
    sch.unroll(f_vectors)
    sch.vectorize(f_lanes)
    sch.decompose_reduction(conv, ry)
    _pack_weights(sch, conv, tile.vector * tile.vectors)
    _epilogue_on_tile(sch, accumulator, out, x_outer, tile.vector)


def _accumulators_at(sch, block, out, tile_loop):
    """`block` reduced into a local tile buffer written back (with the epilogue `out`, if any) once
    per iteration of `tile_loop`; returns the write-back block."""
    accumulator = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulator, tile_loop)
    if out is not None:
        sch.reverse_compute_at(out, tile_loop)
    return accumulator


def _epilogue_on_tile(sch, accumulator, out, tile_loop, vector: int) -> None:
    """The tile's write-back (`accumulator`, from cache_write) and its fused epilogue `out`, both
    already under `tile_loop`: the epilogue reads the accumulators directly, not a copy in a second
    tile buffer, on vectors, its tile loops unrolled, so every access to the tile has a constant
    offset and LLVM keeps the accumulators in registers: no zeroing memset, no stores and reloads
    per tile (1x1 convs, where a tile's reduction is short, ran 8-15 % faster)."""
    from tvm import s_tir

    blocks = [accumulator]
    if out is not None:
        try:
            sch.compute_inline(accumulator)
            blocks = [out]
        except s_tir.ScheduleError:
            blocks.append(out)
    tile_stmt = sch.get(tile_loop)
    for block in blocks:
        # The epilogue's loops follow its own output (NCHW when a layout transpose fused in).
        inner = sch.get_loops(block)[-1]
        if int(sch.get(inner).extent) % vector == 0:
            _, lanes = sch.split(inner, [None, vector])
            sch.vectorize(lanes)
            loops = sch.get_loops(block)
            below = [i for i, loop in enumerate(loops) if sch.get(loop).same_as(tile_stmt)]
            for loop in loops[below[0] + 1:-1] if below else []:
                sch.unroll(loop)


def _pack_weights(sch, conv, width: int) -> None:
    """Store the weights tile by tile, [F / width, KH, KW, C, width] instead of [KH, KW, C, F]:
    one tile's reduction then reads one contiguous block (a 512-channel layer ran at a third of
    peak reading 256 bytes every 2 KB). Annotated as a layout rewrite, the copy is split out of the
    kernel and folded into the constant weights at build time (`compile.schedule_module`)."""
    from tvm.tirx.analysis import undefined_vars

    block = sch.get(conv)
    producers = {sch.get(b).writes[0].source.name for b in sch.get_producers(conv)}
    channel = block.iter_vars[3].var  # the output channel: only the weights' last axis follows it
    for index, region in enumerate(block.reads):
        buffer = region.source
        shape = [int(d) for d in buffer.shape]
        if buffer.name in producers or len(shape) != 4 or shape[3] % width:
            continue
        if not any(var.same_as(channel) for var in undefined_vars(region.region[3].min)):
            continue
        packed = sch.cache_read(conv, index, "global")
        sch.transform_layout(packed, ("write", 0), lambda h, w, c, f: (f // width, h, w, c, f % width))
        sch.annotate(packed, "meta_schedule.layout_rewrite_preproc", True)
        return


# A count whose vectors are narrower than a register is padded from this reduction length up
# (KH * KW * input channels): 1x1 convs measured 1.11-1.15x faster padded at 128-480, a tie at 64,
# 0.74-0.94x at 8-48, where writing the wider output costs more than the FMAs save.
HALF_VECTOR_PAD_REDUCTION = 128


def padded_channels(channels: int, unit: VectorUnit, reduction: int) -> int:
    """The output channels a conv whose outputs each sum `reduction` products is computed with.

    `channels`, unless its vectors would be narrower than a register. A count no size from 4 lanes
    to a register divides (181, 37: predicated vectors, 3-10x slower) is always widened: to the
    next multiple of the vector length when that adds at most an eighth, else of 4 (on AVX-512,
    37 -> 40 rather than 48). A count of half vectors (88, 184, 248 on AVX-512: 8 of 16 lanes) is
    widened to the next multiple of the vector length when that adds at most an eighth and the
    reduction is long enough to pay for it (HALF_VECTOR_PAD_REDUCTION): 3x3 convs ran 1.25-1.4x
    faster at 96, 192, 256. 24, 40 and 56 (a fifth or more to add) keep their several half
    vectors (`conv_tile`); 40 -> 48 ran a 1x1 at 0.77x."""
    whole = -(-channels // unit.lanes) * unit.lanes
    if channels < 4 or whole == channels:
        return channels
    small_extra = whole - channels <= channels / 8
    if not _divisor_vector(channels, unit):
        return whole if small_extra else -(-channels // 4) * 4
    return whole if small_extra and reduction >= HALF_VECTOR_PAD_REDUCTION else channels


def pad_conv_channels(mod, target):
    """`mod` with each NHWC conv whose output channels `padded_channels` widens computed at the
    wider count (weights padded with zeros, folded at build time) and sliced back; the slice fuses
    into the conv's epilogue, where predicated or half-width vectors had slowed every FMA."""
    import numpy as np
    import tvm
    from tvm import relax

    from acc.backends.compile import rewrite_calls

    unit = VectorUnit.of(target)
    conv2d = tvm.ir.Op.get("relax.nn.conv2d")

    def pad(call):
        if call.op != conv2d or not isinstance(call.args[1], tvm.ir.GenericConst):
            return call
        a = call.attrs
        if (a.data_layout, a.kernel_layout, a.out_layout, int(a.groups)) != ("NHWC", "HWIO", "NHWC", 1):
            return call
        weight = call.args[1].value.numpy()
        kh, kw, per_group, channels = weight.shape
        wider = padded_channels(channels, unit, kh * kw * per_group)
        if wider == channels:
            return call
        weight = np.pad(weight, [(0, 0)] * 3 + [(0, wider - channels)])
        conv = relax.op.nn.conv2d(call.args[0], relax.const(weight, str(weight.dtype)), a.strides, a.padding,
                                  a.dilation, 1, "NHWC", "HWIO", "NHWC", a.out_dtype or None)
        return relax.op.strided_slice(conv, axes=[3], begin=[0], end=[channels], assume_inbound=True)

    return rewrite_calls(mod, pad)


def _is_conv(sch, block) -> bool:
    return sch.get(block).name_hint in CONV_BLOCKS and _block_kinds(sch, block) == "SSSSRRR"


def _is_row_dense(sch, block) -> bool:
    """A matmul of one row by a [K, N] matrix (a classifier's Gemm after its weight transpose folded):
    TVM's GEMV rule reduces it along K at a stride of N, one scalar at a time."""
    b = sch.get(block)
    kinds = _block_kinds(sch, block)
    if b.name_hint != "matmul" or len(kinds) < 2 or not kinds.endswith("SR") or "R" in kinds[:-1]:
        return False
    loops = sch.get_loops(block)
    if len(loops) != len(kinds) or any(int(sch.get(lp).extent) != 1 for lp in loops[:-2]):
        return False
    n_var, k_var = b.iter_vars[-2].var, b.iter_vars[-1].var
    for region in b.reads:
        dims = region.region
        if len(dims) >= 2 and dims[-1].min.same_as(n_var) and dims[-2].min.same_as(k_var):
            return True
    return False


def schedule_row_dense(sch, block, unit: VectorUnit) -> None:
    """One row times [K, N]: parallel over tiles of up to 4 vectors along N, each reduced over K
    in registers (one broadcast input and up to 4 weight vectors per step), epilogue on the tile.
    VGG-16's 360x360 classifier layer: 0.064 -> 0.014 ms."""
    from tvm import s_tir

    *outer, n, k = sch.get_loops(block)
    width = int(sch.get(n).extent)
    vector = _channel_vector(width, unit)
    if not vector:
        raise s_tir.ScheduleError("no vector divides the output width")
    vectors = max(_divisors(width // vector, 4))
    out = _inline_epilogue(sch, block)
    n_tile, n_vectors, n_lanes = sch.split(n, [None, vectors, vector])
    sch.reorder(*outer, n_tile, k, n_vectors, n_lanes)
    tile = sch.fuse(*outer, n_tile) if outer else n_tile
    sch.parallel(tile)
    accumulator = _accumulators_at(sch, block, out, tile)
    sch.unroll(n_vectors)
    sch.vectorize(n_lanes)
    sch.decompose_reduction(block, k)
    _epilogue_on_tile(sch, accumulator, out, tile, vector)


def _is_channel_window(sch, block, unit: VectorUnit) -> bool:
    """A reduction over a window of an NHWC tensor (max/avg pooling, a global mean): spatial loops,
    then reduction loops, and every input read with the last spatial index (the channel) last, so
    channels are contiguous. Matmuls and softmax/norm reductions read a reduced index last."""
    kinds = _block_kinds(sch, block)
    lead = _leading_spatial(kinds)
    if lead < 2 or lead == len(kinds) or set(kinds[lead:]) != {"R"}:
        return False
    b = sch.get(block)
    loops = sch.get_loops(block)
    if len(loops) != len(kinds) or not _channel_vector(int(sch.get(loops[lead - 1]).extent), unit):
        return False
    channel = b.iter_vars[lead - 1].var
    return bool(b.reads) and all(r.region and r.region[-1].min.same_as(channel) for r in b.reads)


def schedule_channel_window(sch, block, unit: VectorUnit) -> None:
    """Parallel over the output pixels, the window reduced with one vector of channels at a time
    (TVM's default reduced one scalar at a time behind a full padded copy: ImageNet ResNet-18's
    3x3 max-pool ran 3.7x slower than onnxruntime's). An input padding is computed inline."""
    from tvm import ir, tirx

    for producer in sch.get_producers(block):
        body = sch.get(producer).body
        if isinstance(body, tirx.BufferStore) and not isinstance(body.value, ir.TensorLoad) \
                and len(sch.get_consumers(producer)) == 1:
            sch.compute_inline(producer)
    lead = _leading_spatial(_block_kinds(sch, block))
    loops = sch.get_loops(block)
    spatial, reduction = loops[:lead], loops[lead:]
    vector = _channel_vector(int(sch.get(spatial[-1]).extent), unit)
    channel_tiles, lanes = sch.split(spatial[-1], [None, vector])
    sch.reorder(*spatial[:-1], channel_tiles, *reduction, lanes)
    sch.parallel(sch.fuse(*spatial[:-1]))
    sch.vectorize(lanes)
    init = sch.decompose_reduction(block, reduction[0])
    sch.vectorize(sch.get_loops(init)[-1])


def schedule_func(func, target, convs_only: bool = False):
    """A scheduled copy of `func`, or None when no rule fits (the build then keeps TVM's default).

    `convs_only`: None unless `func` holds a convolution or a one-row dense layer (acc's kernels;
    the others go to TVM's rules first).
    """
    from tvm import s_tir

    unit = VectorUnit.of(target)
    sch = s_tir.Schedule(func)
    try:
        blocks = _root_blocks(sch)
    except Exception:  # noqa: BLE001 - functions without a root block (already lowered)
        return None
    convs = [b for b in blocks if _is_conv(sch, b)]
    kernels = convs or [b for b in blocks if _is_row_dense(sch, b)]
    if len(kernels) > 1 or (convs_only and not kernels):
        return None
    if kernels:
        try:
            (schedule_conv if convs else schedule_row_dense)(sch, kernels[0], unit)
        except s_tir.ScheduleError:
            if convs_only:
                return None
            sch = s_tir.Schedule(func)
    if not kernels:
        for block in [b for b in _root_blocks(sch) if _is_channel_window(sch, b, unit)]:
            try:
                schedule_channel_window(sch, block, unit)
            except s_tir.ScheduleError:
                continue
    # The kernels' own blocks now sit deeper than their iterators: _parallel_outer leaves them.
    for block in _root_blocks(sch):
        try:
            _parallel_outer(sch, block, unit)
        except s_tir.ScheduleError:
            continue
    return sch


def default_schedule_pass(target):
    """A module pass that schedules every unscheduled PrimFunc: acc's convolution kernel, then
    TVM's CPU rules (dense layers, reductions), then acc's parallel loops for the rest."""
    import tvm
    from tvm import tirx
    from tvm.s_tir import dlight

    tvm_rules = dlight.ApplyDefaultSchedule(dlight.cpu.GEMV(), dlight.cpu.Reduction())

    def _ours(mod, convs_only: bool):
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or int(func.attrs.get("tirx.is_scheduled", 0)) == 1:
                continue
            sch = schedule_func(func, target, convs_only)
            if sch is not None:
                updates[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    @tvm.transform.module_pass(opt_level=0, name="AccCpuDefaultSchedule")
    def _apply(mod, _ctx):
        return _ours(tvm_rules(_ours(mod, convs_only=True)), convs_only=False)

    return _apply
