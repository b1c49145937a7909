"""The ``tinyvim`` ONNX domain: op schemas, function bodies in standard ops, and NumPy references.

Every custom op has four faces that must agree (``tests/test_custom_ops.py`` holds them together):
the PyTorch op (``tinyvim_deploy.models.ops``), the ONNX schema registered here, the model-local
ONNX function that lets any runtime execute the node without a plugin, and a NumPy reference.
The contract is in ``export/OPS.md``.

Function bodies are built for the model's ai.onnx opset (18 or later): onnx.checker insists that a
function imports the same ai.onnx version as the model.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper

DOMAIN = "tinyvim"
DOMAIN_VERSION = 1
SCAN_IMPLS = ("scan", "unrolled", "chunked")
DEFAULT_SCAN_IMPL = "scan"
CHUNK = 16  # chunk length of the "chunked" closed form

# --------------------------------------------------------------------------------------------------
# Schemas (process-global in onnx; registering twice raises, so guard)
# --------------------------------------------------------------------------------------------------


def register_schemas() -> None:
    from onnx.defs import OpSchema

    def param(name: str, doc: str = "") -> OpSchema.FormalParameter:
        return OpSchema.FormalParameter(name, "T", doc)

    floats = [("T", ["tensor(float)", "tensor(float16)"], "float tensors")]
    pool_attr = [OpSchema.Attribute("pool", OpSchema.AttrType.INT, "pooling factor P")]
    schemas = [
        OpSchema(
            "SelectiveScan", DOMAIN, DOMAIN_VERSION,
            doc="Mamba-1 selective scan with delta softplus and D skip (export/OPS.md).",
            inputs=[param(n) for n in ("u", "delta", "A", "B", "C", "D", "delta_bias")],
            outputs=[param("y")], type_constraints=floats,
        ),
        OpSchema(
            "LaplaceSplit", DOMAIN, DOMAIN_VERSION,
            doc="P x P average pool (low) and the band-pass residual x - nearest_up(low).",
            inputs=[param("X")], outputs=[param("Low"), param("Band")], type_constraints=floats,
            attributes=pool_attr,
        ),
        OpSchema(
            "LaplaceMerge", DOMAIN, DOMAIN_VERSION,
            doc="Bilinear (align_corners=False) upsampling of Low to Band's size, plus Band.",
            inputs=[param("Low"), param("Band")], outputs=[param("Y")], type_constraints=floats,
            attributes=pool_attr,
        ),
    ]
    for schema in schemas:
        if not onnx.defs.has(schema.name, DOMAIN):
            onnx.defs.register_schema(schema)


def translation_table() -> dict:
    """torch op -> onnxscript callable emitting a bare ``tinyvim::`` node (bodies are attached later)."""
    import onnxscript
    import torch

    import tinyvim_deploy.models.ops  # noqa: F401  (registers torch.ops.tinyvim.*)

    register_schemas()
    tinyvim = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)

    def selective_scan(u, delta, A, B, C, D, delta_bias):
        return tinyvim.SelectiveScan(u, delta, A, B, C, D, delta_bias)

    def laplace_split(x, pool: int):
        return tinyvim.LaplaceSplit(x, pool=pool)

    def laplace_merge(low, band, pool: int):
        return tinyvim.LaplaceMerge(low, band, pool=pool)

    return {
        torch.ops.tinyvim.selective_scan.default: selective_scan,
        torch.ops.tinyvim.laplace_split.default: laplace_split,
        torch.ops.tinyvim.laplace_merge.default: laplace_merge,
    }


# --------------------------------------------------------------------------------------------------
# A tiny builder for function bodies: b.Mul(x, y) appends a node and returns its output name.
# --------------------------------------------------------------------------------------------------


class _Body:
    def __init__(self, prefix: str):
        self.nodes: list[onnx.NodeProto] = []
        self._ids = itertools.count()
        self._prefix = prefix

    def __getattr__(self, op_type: str):
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def emit(*inputs: str, outputs: int = 1, **attrs):
            names = [f"{self._prefix}{next(self._ids)}" for _ in range(outputs)]
            self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
            return names[0] if outputs == 1 else names

        return emit

    def const(self, value, dtype=np.float32) -> str:
        return self.Constant(value=helper.make_tensor(
            f"{self._prefix}c{next(self._ids)}", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
            np.shape(value), np.asarray(value, dtype=dtype).ravel().tolist(),
        ))

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64)


def _function(name: str, inputs, outputs, body: _Body, opset: int, attributes=()) -> onnx.FunctionProto:
    return helper.make_function(
        DOMAIN, name, list(inputs), list(outputs), body.nodes,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
        attributes=list(attributes),
    )


# --------------------------------------------------------------------------------------------------
# SelectiveScan
# --------------------------------------------------------------------------------------------------


def _scan_prologue(b: _Body):
    """Δ = softplus(delta + bias) with PyTorch's threshold 20, then time-major decays and drives."""
    z = b.Add("delta", b.Unsqueeze("delta_bias", b.ints(1)))
    dt = b.Where(b.Greater(z, b.const(20.0)), z, b.Softplus(z))  # ONNX Softplus has no threshold
    shape_B = b.Shape("B")  # (b, K, N, L)
    batch, k, n, length = (b.Slice(shape_B, b.ints(i), b.ints(i + 1)) for i in range(4))
    bkdl = b.Concat(batch, k, b.ints(-1), length, axis=0)
    dt_t = b.Transpose(b.Reshape(dt, bkdl), perm=[3, 0, 1, 2])  # (L, b, K, d)
    u_t = b.Transpose(b.Reshape("u", bkdl), perm=[3, 0, 1, 2])
    A3 = b.Reshape("A", b.Concat(k, b.ints(-1), n, axis=0))  # (K, d, N)
    log_decay = b.Mul(b.Unsqueeze(dt_t, b.ints(-1)), A3)  # (L, b, K, d, N), <= 0
    B_t = b.Unsqueeze(b.Transpose("B", perm=[3, 0, 1, 2]), b.ints(3))  # (L, b, K, 1, N)
    C_t = b.Unsqueeze(b.Transpose("C", perm=[3, 0, 1, 2]), b.ints(3))
    drive = b.Mul(b.Unsqueeze(b.Mul(dt_t, u_t), b.ints(-1)), B_t)  # (L, b, K, d, N)
    return log_decay, drive, C_t


def _scan_epilogue(b: _Body, y_t: str) -> None:
    """(L, b, K, d) -> (b, K·D, L), plus the D skip."""
    y = b.Reshape(b.Transpose(y_t, perm=[1, 2, 3, 0]), b.Shape("u"))
    b.nodes.append(helper.make_node("Add", [y, b.Mul(b.Unsqueeze("D", b.ints(1)), "u")], ["y"]))


def _recurrence_scan(b: _Body, log_decay: str, drive: str, C_t: str, opset: int) -> str:
    """One ONNX ``Scan`` over L; state h (b, K, d, N); emits y_t = h_t·c_t per step.

    The step is three nodes (Mul, Add, MatMul): each node costs ORT a dispatch per step, so the
    state is emitted straight from the Add (no Identity) and the read-out is one batched MatMul
    rather than a broadcast Mul and a ReduceSum.
    """
    decay = b.Exp(log_decay)
    h0 = b.ConstantOfShape(b.Slice(b.Shape(drive), b.ints(1), b.ints(2**62)),
                           value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    c_cols = b.Transpose(C_t, perm=[0, 1, 2, 4, 3])  # (L, b, K, N, 1)
    step = _Body("s")
    step.nodes.append(helper.make_node("Add", [step.Mul("a_t", "h_in"), "bu_t"], ["h_out"]))
    step.nodes.append(helper.make_node("MatMul", ["h_out", "c_t"], ["y_t"]))

    def tensor(name: str, rank: int) -> onnx.ValueInfoProto:
        # Rank only, anonymous dims: named dim_params would be shared by every inlined copy of the
        # function and ORT's planner would then assume equal sizes across blocks of different width.
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * rank)

    graph = helper.make_graph(
        step.nodes, "selective_scan_step",
        [tensor("h_in", 4), tensor("a_t", 4), tensor("bu_t", 4), tensor("c_t", 4)],
        [tensor("h_out", 4), tensor("y_t", 4)],
    )
    _, y_t = b.Scan(h0, decay, drive, c_cols, outputs=2, body=graph, num_scan_inputs=3)
    return b.Squeeze(y_t, b.ints(-1))  # (L, b, K, d)


def _recurrence_unrolled(b: _Body, log_decay: str, drive: str, C_t: str, length: int) -> str:
    """L explicit steps (needs a static L): Split, L × (Mul, Add, Mul, ReduceSum), Concat."""
    decay = b.Exp(log_decay)
    if length == 1:
        return b.ReduceSum(b.Mul(drive, C_t), b.ints(-1), keepdims=0)
    a = b.Split(decay, outputs=length, axis=0, num_outputs=length)
    u = b.Split(drive, outputs=length, axis=0, num_outputs=length)
    c = b.Split(C_t, outputs=length, axis=0, num_outputs=length)
    axis = b.ints(-1)
    h, ys = u[0], []
    for t in range(length):
        if t:
            h = b.Add(b.Mul(a[t], h), u[t])
        ys.append(b.ReduceSum(b.Mul(h, c[t]), axis, keepdims=0))
    return b.Concat(*ys, axis=0)


def _recurrence_chunked(b: _Body, log_decay: str, drive: str, C_t: str, length: int, chunk: int = CHUNK) -> str:
    """Chunked closed form: inside a chunk h_i = Σ_{j≤i} exp(cs_i − cs_j)·drive_j (cs = cumulative log
    decay, masked on the exponent so nothing overflows), then a sequential carry between chunks."""
    T = min(chunk, length)
    n = -(-length // T)
    pad = n * T - length
    if pad:  # zero log-decay and zero drive: identity steps after the end
        pads = b.ints(0, 0, 0, 0, 0, pad, 0, 0, 0, 0)
        log_decay, drive, C_t = b.Pad(log_decay, pads), b.Pad(drive, pads), b.Pad(C_t, pads)
    chunked = lambda x: b.Reshape(x, b.Concat(b.ints(n, T), b.Slice(b.Shape(x), b.ints(1), b.ints(5)), axis=0))  # noqa: E731
    ld, dr, ct = chunked(log_decay), chunked(drive), chunked(C_t)  # (n, T, b, K, d, N)
    cs = b.CumSum(ld, b.const(1, np.int64))
    diff = b.Sub(b.Unsqueeze(cs, b.ints(2)), b.Unsqueeze(cs, b.ints(1)))  # (n, T_i, T_j, ...) = cs_i - cs_j
    mask = np.tril(np.ones((T, T), dtype=bool)).reshape(1, T, T, 1, 1, 1, 1)
    weights = b.Exp(b.Where(b.const(mask, np.bool_), diff, b.const(-np.inf)))
    h_local = b.ReduceSum(b.Mul(weights, b.Unsqueeze(dr, b.ints(1))), b.ints(2), keepdims=0)  # (n, T, ...)
    decay_in = b.Exp(cs)  # decay from the chunk start up to i
    pieces = b.Split(h_local, outputs=n, axis=0, num_outputs=n) if n > 1 else [h_local]
    totals = b.Split(decay_in, outputs=n, axis=0, num_outputs=n) if n > 1 else [decay_in]
    last = b.ints(T - 1)
    carry, states = None, []
    for j in range(n):
        state = pieces[j] if carry is None else b.Add(pieces[j], b.Mul(totals[j], carry))
        states.append(state)
        carry = b.Gather(state, last, axis=1)  # (1, 1, b, K, d, N)
    h = b.Concat(*states, axis=0) if n > 1 else states[0]
    y = b.ReduceSum(b.Mul(h, ct), b.ints(-1), keepdims=0)  # (n, T, b, K, d)
    y = b.Reshape(y, b.Concat(b.ints(n * T), b.Slice(b.Shape(y), b.ints(2), b.ints(5)), axis=0))
    return b.Slice(y, b.ints(0), b.ints(length), b.ints(0)) if pad else y


def selective_scan_function(opset: int, impl: str = DEFAULT_SCAN_IMPL, length: int | None = None) -> onnx.FunctionProto:
    """FunctionProto for ``tinyvim::SelectiveScan``; ``unrolled``/``chunked`` need the static L."""
    if impl not in SCAN_IMPLS:
        raise ValueError(f"unknown scan implementation {impl!r}; choose from {', '.join(SCAN_IMPLS)}")
    if impl != "scan" and length is None:
        raise ValueError(f"scan implementation {impl!r} needs a static sequence length")
    b = _Body("ss")
    log_decay, drive, C_t = _scan_prologue(b)
    if impl == "scan":
        y_t = _recurrence_scan(b, log_decay, drive, C_t, opset)
    elif impl == "unrolled":
        y_t = _recurrence_unrolled(b, log_decay, drive, C_t, length)
    else:
        y_t = _recurrence_chunked(b, log_decay, drive, C_t, length)
    _scan_epilogue(b, y_t)
    return _function("SelectiveScan", ["u", "delta", "A", "B", "C", "D", "delta_bias"], ["y"], b, opset)


# --------------------------------------------------------------------------------------------------
# LaplaceSplit / LaplaceMerge
# --------------------------------------------------------------------------------------------------


def _pool_const(b: _Body) -> str:
    """The function attribute ``pool`` as a 1-element int64 tensor."""
    node = helper.make_node("Constant", [], [f"{b._prefix}pool"])
    node.attribute.append(helper.make_attribute_ref("value_int", onnx.AttributeProto.INT))
    node.attribute[-1].ref_attr_name = "pool"
    b.nodes.append(node)
    return b.Unsqueeze(node.output[0], b.ints(0))


def laplace_split_function(opset: int) -> onnx.FunctionProto:
    b = _Body("ls")
    p = _pool_const(b)
    shape = b.Shape("X")  # (b, c, H, W)
    bc = b.Slice(shape, b.ints(0), b.ints(2))
    h, w = b.Slice(shape, b.ints(2), b.ints(3)), b.Slice(shape, b.ints(3), b.ints(4))
    hp, wp = b.Div(h, p), b.Div(w, p)
    blocks = b.Reshape("X", b.Concat(bc, hp, p, wp, p, axis=0))  # (b, c, H/P, P, W/P, P)
    low6 = b.ReduceMean(blocks, b.ints(3, 5), keepdims=1)  # (b, c, H/P, 1, W/P, 1)
    b.nodes.append(helper.make_node("Reshape", [low6, b.Concat(bc, hp, wp, axis=0)], ["Low"]))
    nearest = b.Reshape(b.Expand(low6, b.Concat(bc, hp, p, wp, p, axis=0)), shape)
    b.nodes.append(helper.make_node("Sub", ["X", nearest], ["Band"]))
    return _function("LaplaceSplit", ["X"], ["Low", "Band"], b, opset, attributes=["pool"])


def laplace_merge_function(opset: int) -> onnx.FunctionProto:
    b = _Body("lm")
    up = b.Resize("Low", "", "", b.Shape("Band"), mode="linear",
                  coordinate_transformation_mode="pytorch_half_pixel")
    b.nodes.append(helper.make_node("Add", [up, "Band"], ["Y"]))
    return _function("LaplaceMerge", ["Low", "Band"], ["Y"], b, opset, attributes=["pool"])


def functions_for(opset: int, scan_impl: str = DEFAULT_SCAN_IMPL, length: int | None = None) -> list[onnx.FunctionProto]:
    return [
        selective_scan_function(opset, scan_impl, length),
        laplace_split_function(opset),
        laplace_merge_function(opset),
    ]


# --------------------------------------------------------------------------------------------------
# NumPy references (float64 inside, float32 out) — the oracles for the function bodies
# --------------------------------------------------------------------------------------------------


def selective_scan_np(u, delta, A, B, C, D, delta_bias) -> np.ndarray:
    u, delta, A, B, C, D, bias = (np.asarray(x, np.float64) for x in (u, delta, A, B, C, D, delta_bias))
    batch, kd, L = u.shape
    group = kd // B.shape[1]
    z = delta + bias[:, None]
    dt = np.where(z > 20, z, np.log1p(np.exp(np.minimum(z, 20))))
    Bc, Cc = np.repeat(B, group, axis=1), np.repeat(C, group, axis=1)  # (b, K·D, N, L)
    h = np.zeros((batch, kd, A.shape[1]))
    y = np.empty_like(u)
    for t in range(L):
        h = np.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * Bc[..., t]
        y[:, :, t] = (h * Cc[..., t]).sum(-1)
    return (y + D[:, None] * u).astype(np.float32)


def laplace_split_np(x, pool: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    b, c, H, W = x.shape
    low = x.reshape(b, c, H // pool, pool, W // pool, pool).mean(axis=(3, 5))
    band = x - np.repeat(np.repeat(low, pool, axis=2), pool, axis=3)
    return low.astype(np.float32), band.astype(np.float32)


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Rows: output pixels; PyTorch align_corners=False source coordinates, clamped at the borders."""
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def laplace_merge_np(low, band, pool: int) -> np.ndarray:
    low, band = np.asarray(low, np.float64), np.asarray(band, np.float64)
    rows = _bilinear_matrix(low.shape[2], band.shape[2])
    cols = _bilinear_matrix(low.shape[3], band.shape[3])
    up = np.einsum("hi,bcij,wj->bchw", rows, low, cols)
    return (up + band).astype(np.float32)


def single_op_model(op_type: str, inputs: dict[str, np.ndarray], n_outputs: int, opset: int = 20,
                    scan_impl: str = DEFAULT_SCAN_IMPL, **attrs) -> onnx.ModelProto:
    """A one-node model calling a ``tinyvim`` op through its function (for tests and lowering benchmarks)."""
    length = inputs["u"].shape[-1] if op_type == "SelectiveScan" else None
    fn = {f.name: f for f in functions_for(opset, scan_impl, length)}[op_type]
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, list(inputs), outs, domain=DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], op_type,
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["?"] * (3 if op_type == "SelectiveScan" else 4))
         for o in outs],
    )
    return helper.make_model(
        graph, functions=[fn], ir_version=10,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
    )
