#!/usr/bin/env python3
"""Writes the hand-made seed inputs of fuzz/corpus/ (run from the repository root).

Real files are copied too when ../shared is present: two small golden checkpoints, the .pth test
fixtures of medsa-io, a few 2-D case PNGs, and a cut-down header of a real NIfTI atlas. Only
the Python standard library is used. The JPEG seeds are written by fuzz/seeds/jpeg.rs (see the
README)."""
import gzip, json, os, shutil, struct, zlib

ROOT = os.getcwd()
C = os.path.join(ROOT, "fuzz", "corpus")
SHARED = os.path.join(ROOT, "..", "shared")


def put(target, name, data):
    d = os.path.join(C, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def copy(target, src, name=None):
    if os.path.exists(src):
        put(target, name or os.path.basename(src), open(src, "rb").read())


# ----- safetensors ---------------------------------------------------------------------------
def safetensors(tensors, meta=None):
    header, blobs, off = {}, [], 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if meta is not None:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


f32 = lambda *v: struct.pack(f"<{len(v)}f", *v)
put("safetensors_model", "one_f32", safetensors([("a.weight", "F32", [2, 2], f32(1, 2, 3, 4))]))
put("safetensors_model", "f16_bf16", safetensors([
    ("h", "F16", [3], struct.pack("<3e", 1.0, -2.0, 0.5)),
    ("b", "BF16", [1, 2], b"\x80\x3f\x00\x40"),
    ("bn.num_batches_tracked", "I64", [], struct.pack("<q", 7)),
], {"format": "pt"}))
put("safetensors_model", "int_tensor", safetensors([("idx", "I32", [2], struct.pack("<2i", 1, 2))]))
put("safetensors_model", "empty", safetensors([]))
put("safetensors_model", "nan_inf", safetensors([("x", "F32", [3], f32(float("nan"), float("inf"), 0))]))
put("safetensors_model", "zero_dim", safetensors([("z", "F32", [0, 4], b"")]))
put("safetensors_model", "sam_key", safetensors([("mask_decoder.iou_token.weight", "F32", [1, 16], f32(*range(16)))]))
G = os.path.join(SHARED, "golden")
for n in ["sam_tiny", "medsa_2d"]:
    copy("safetensors_model", os.path.join(G, f"{n}.weights.safetensors"))

# ----- detect: `name<TAB>dtype<TAB>[shape]` lines ----------------------------------------------
copy("detect", os.path.join(G, "lite_medsam_keys.txt"))
for n in ["sam_tiny", "sam_tiny_pad", "medsa_2d", "medsa_3d", "medsa_hyp_decoder"]:
    p = os.path.join(G, f"{n}.weights.safetensors")
    if not os.path.exists(p):
        continue
    b = open(p, "rb").read()
    h = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])
    lines = [f"{k}\t{v['dtype']}\t{v['shape']}" for k, v in h.items() if k != "__metadata__"]
    put("detect", f"{n}.txt", ("\n".join(lines) + "\n").encode())
put("detect", "tiny_hand", b"image_encoder.patch_embed.proj.weight\tF32\t[8, 3, 16, 16]\n"
    b"image_encoder.blocks.0.attn.rel_pos_h\tF32\t[7, 4]\nmask_decoder.mask_tokens.weight\tF32\t[4, 8]\n")

# ----- pth: the medsa-io fixtures -------------------------------------------------------------
FX = os.path.join(ROOT, "crates", "medsa-io", "tests", "fixtures")
for n in sorted(os.listdir(FX)):
    if n.endswith(".pth"):
        copy("pth", os.path.join(FX, n))


# ----- NIfTI ----------------------------------------------------------------------------------
def nii_header(dims, datatype, bitpix, big=False, vox_offset=352.0, pixdim=(1, 0.5, 0.75, 2, 1, 1, 1, 1),
               qform=0, sform=0, slope=0.0, inter=0.0):
    e = ">" if big else "<"
    dim = [len(dims)] + list(dims) + [1] * (7 - len(dims))
    h = struct.pack(e + "i10s18sihcB", 348, b"", b"", 0, 0, b"r", 0)
    h += struct.pack(e + "8h", *dim)
    h += struct.pack(e + "3f", 0, 0, 0) + struct.pack(e + "hhhh", 0, datatype, bitpix, 0)
    h += struct.pack(e + "8f", *pixdim)
    h += struct.pack(e + "3f", vox_offset, slope, inter)
    h += struct.pack(e + "hBB", 0, 0, 10) + struct.pack(e + "4f", 0, 0, 0, 0) + struct.pack(e + "2i", 0, 0)
    h += struct.pack("80s24s", b"medsa fuzz seed", b"")
    h += struct.pack(e + "hh", qform, sform)
    h += struct.pack(e + "6f", 0, 0, 1, 10, -5, 2)  # quatern_b/c/d, qoffset_x/y/z
    h += struct.pack(e + "12f", 0.5, 0, 0, -10, 0, 0.75, 0, 5, 0, 0, 2, 1)  # srow_x/y/z
    h += struct.pack("16s4s", b"", b"n+1\0")
    assert len(h) == 348, len(h)
    return h


def nii(dims, fmt, values, datatype, bitpix, big=False, ext=b"\0\0\0\0", **kw):
    e = ">" if big else "<"
    h = nii_header(dims, datatype, bitpix, big, vox_offset=348.0 + len(ext), **kw)
    return h + ext + struct.pack(e + f"{len(values)}{fmt}", *values)


put("nifti", "f32_2x3x4.nii", nii([2, 3, 4], "f", [i * 0.5 for i in range(24)], 16, 32))
put("nifti", "i16_be_scaled.nii", nii([3, 2, 2], "h", list(range(-6, 6)), 4, 16, big=True, slope=2.0, inter=-1.0))
put("nifti", "u8_qform.nii", nii([2, 2, 2], "B", list(range(8)), 2, 8, qform=1, pixdim=(-1, 1, 1, 1, 1, 1, 1, 1)))
put("nifti", "f64_sform_4d.nii", nii([2, 2, 1, 1], "d", [1.0, -2.0, 3.5, 1e3], 64, 64, sform=1))
put("nifti", "u16_ext.nii", nii([2, 1, 3], "H", [0, 1, 65535, 7, 8, 9], 512, 16,
                                ext=b"\1\0\0\0" + struct.pack("<ii", 16, 0) + b"medsa-ex"))
put("nifti", "i16_2x3x4.nii.gz", gzip.compress(nii([2, 3, 4], "h", list(range(24)), 4, 16), mtime=0))
aal = os.path.join(SHARED, "data", "volumes", "colin27", "aal.nii.gz")
if os.path.exists(aal):
    raw = gzip.open(aal).read()
    h = bytearray(raw[:348])
    vo = int(struct.unpack("<f", h[108:112])[0])
    datatype, bitpix = struct.unpack("<hh", h[70:74])
    struct.pack_into("<8h", h, 40, 3, 4, 3, 2, 1, 1, 1, 1)  # cut to 4x3x2 voxels
    n = 4 * 3 * 2 * bitpix // 8
    cut = bytes(h) + raw[348:vo] + raw[vo:vo + n]
    put("nifti", "aal_cut.nii", cut)
    put("nifti", "aal_cut.nii.gz", gzip.compress(cut, mtime=0))


# ----- PNG ------------------------------------------------------------------------------------
def png(w, h, color_type, bit_depth, rows, interlace=0, plte=None, trns=None):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, interlace))
    if plte:
        out += chunk(b"PLTE", plte)
    if trns:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(b"".join(b"\0" + r for r in rows))) + chunk(b"IEND", b"")


put("image", "gray8_5x3.png", png(5, 3, 0, 8, [bytes(range(y * 5, y * 5 + 5)) for y in range(3)]))
put("image", "rgb8_3x2.png", png(3, 2, 2, 8, [bytes(range(9)), bytes(range(100, 109))]))
put("image", "rgba16_2x2.png", png(2, 2, 6, 16, [bytes(range(16)), bytes(range(16, 32))]))
put("image", "palette_4x2.png", png(4, 2, 3, 2, [b"\x1b", b"\xe4"], plte=b"\0\0\0\xff\0\0\0\xff\0\0\0\xff", trns=b"\x80"))
put("image", "graya_1x1.png", png(1, 1, 4, 8, [b"\x80\xff"]))
put("image", "gray1_8x1.png", png(8, 1, 0, 1, [b"\xa5"]))
D = os.path.join(SHARED, "data", "cases2d")
for n in ["colin27_z60_Hippocampus_L_litemedsam_pred.png", "colin27_z78_Thalamus_L_mask.png",
          "colin27_z60_brain_img.png"]:
    copy("image", os.path.join(D, n))

# ----- prompts --------------------------------------------------------------------------------
for i, s in enumerate(["1pt", "3pt", "bbox0.5", "bbox0.75", "jitterbox", "iterative:5", "bbox1e-3",
                       "10,20,30,40", " 1.5, 2 ,3,4", "3,4", "3,4,bg", "7,8,+", "z:90", "axial:3",
                       "sagittal:0", "Y", "ct-abdomen", "brain", "mri", "-100,200", "inf,1", "1e39,2"]):
    put("prompts", f"seed{i:02}", s.encode())
