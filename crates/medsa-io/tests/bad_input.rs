//! The bad-input table of `medsa-io`: every way a NIfTI volume, an image, a `.pth` checkpoint or
//! an argument can be wrong, and the typed [`Error`] it gets. Nothing read from outside panics,
//! and sizes are checked before anything is allocated (the "terabyte" rows finish at once with
//! a few hundred bytes of input). Each row below is one entry of [`table`].
//!
//! | input | what is wrong | error |
//! |---|---|---|
//! | `.nii` | empty / shorter than the 348-byte header | `Truncated { what: "header" }` |
//! | `.nii` | `sizeof_hdr` not 348 (garbage), or 540 (NIfTI-2) | `NiftiHeader` |
//! | `.nii` | magic `ni1` (a `.hdr`/`.img` pair) | `NiftiHeader` |
//! | `.nii` | `dim[0]` = 0 or 8 (rank outside 1..=7) | `NiftiHeader` |
//! | `.nii` | a negative dimension | `NiftiHeader` |
//! | `.nii` | wrong rank: 2-D, or 4-D with 2 time points | `NotAVolume` |
//! | `.nii` | a zero dimension | `ZeroDim` |
//! | `.nii` | dims 32767³ of f64 (281 TB) in a 400-byte file | `TooLarge` |
//! | `.nii` | dims 32767×32767×2 (8 GiB as f32) in a 400-byte file | `Truncated { what: "voxel data" }` |
//! | `.nii.gz` | the same 8 GiB claim in a 100-byte gzip | `Truncated { what: "gzip stream (voxel data)" }` |
//! | `.nii` | wrong dtype: complex64 (32), RGB24 (128), unknown code | `UnsupportedDataType` |
//! | `.nii` | spacing zero, negative, NaN or infinite | `Spacing` |
//! | `.nii` | `vox_offset` NaN, negative or fractional | `NiftiHeader` |
//! | `.nii` | `vox_offset` 1e9 (a 1 GB extension) | `NiftiHeader` |
//! | `.nii` | `vox_offset` past the end of the file | `Truncated { what: "header extensions" }` |
//! | `.nii` | voxel data one byte short | `Truncated { what: "voxel data" }` |
//! | `.nii` | NaN / infinite voxels, or f64 voxels that overflow f32 | `NonFinite` (count, first voxel) |
//! | `.nii.gz` | damaged deflate data or CRC | `Gzip` |
//! | `.nii.gz` | gzip stream cut short | `Truncated` |
//! | slice | index past the end of the axis | `Slice` |
//! | slice | data length disagrees with dims | `Slice` |
//! | slice | inserted slice of the wrong shape | `Slice` |
//! | labels | label count differs from the voxel count | `InvalidArgument` |
//! | window | lower ≥ upper, NaN or infinite bound; unknown preset | `InvalidArgument` |
//! | window | percentiles outside 0..=100 or inverted; NaN values | `InvalidArgument` |
//! | window | all-zero (empty) volume | `Ok((0, 0))`, values stay 0 |
//! | axis | not x/y/z/sagittal/coronal/axial | `InvalidArgument` |
//! | image | empty, or not an image at all | `Image` |
//! | image | PNG truncated, bad CRC, zero width | `Image` |
//! | image | PNG claiming 10⁵ × 10⁵ pixels (30 GB) | `Image` (limits, nothing allocated) |
//! | image | JPEG truncated | `Image` |
//! | image | `Image::new` with zero size, 2 channels or wrong length | `InvalidArgument` |
//! | overlay | mask of the wrong size, NaN coordinate | `InvalidArgument` |
//! | overlay | markers and boxes outside the image | `Ok` (clipped) |
//! | mask PNG | zero width | `InvalidArgument` |
//! | `.pth` | empty, not a zip, truncated zip | `Zip` |
//! | `.pth` | zip without `data.pkl` | `Layout` |
//! | `.pth` | `byteorder` big | `Layout` |
//! | `.pth` | `data.pkl` is not a dict / has no tensors | `Layout` |
//! | `.pth` | storage entry missing | `MissingEntry` |
//! | `.pth` | pickle truncated, stack underflow | `Pickle` |
//! | `.pth` | unknown opcode | `UnknownOpcode` |
//! | `.pth` | `os.system` / `builtins.eval` global | `UnsafeGlobal` (nothing executed) |
//! | `.pth` | negative size or stride, size/stride ranks differ | `Pickle` |
//! | `.pth` | size 2⁴⁰ × 2⁴⁰ (more than 2³⁴ elements, or overflowing) | `TooLarge` |
//! | `.pth` | size 2¹⁷ × 2¹⁷ (64 GB of f32) over a 16-byte storage | `StorageTooSmall` (nothing allocated) |
//! | `.pth` | strides whose arithmetic overflows u64 | `TooLarge` |
//! | `.pth` | view reaching past its storage | `StorageTooSmall` |
//! | `.pth` | storage key `../x` (path escape) | `Pickle` |
//! | `.pth` | wrong dtype: an unknown `torch.ComplexFloatStorage` | `UnsafeGlobal` |
//! | `.pth` | duplicate state-dict key | `Layout` |

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;

use medsa_io::image::{decode_image, render_overlay, save_mask_png, ColorMode, Image, Marker, Overlay};
use medsa_io::nifti::{extract_slice, insert_slice, Axis, Labels, Slice, Volume};
use medsa_io::pth::read_pth_bytes;
use medsa_io::window::{mri_window, percentile_window, HuWindow};
use medsa_io::Error;

// ----- builders ----------------------------------------------------------------------------------

/// A NIfTI-1 header (little-endian unless `big`), see nifti1.h for the offsets.
#[derive(Clone)]
struct Nii {
    sizeof_hdr: i32,
    dim: [i16; 8],
    datatype: i16,
    bitpix: i16,
    pixdim: [f32; 8],
    vox_offset: f32,
    magic: [u8; 4],
}

impl Nii {
    fn new(dims: &[i16], datatype: i16, bitpix: i16) -> Nii {
        let mut dim = [dims.len() as i16, 1, 1, 1, 1, 1, 1, 1];
        dim[1..=dims.len()].copy_from_slice(dims);
        Nii {
            sizeof_hdr: 348,
            dim,
            datatype,
            bitpix,
            pixdim: [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            vox_offset: 352.0,
            magic: *b"n+1\0",
        }
    }

    fn header(&self) -> Vec<u8> {
        let mut h = vec![0u8; 348];
        h[0..4].copy_from_slice(&self.sizeof_hdr.to_le_bytes());
        for (i, d) in self.dim.iter().enumerate() {
            h[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
        }
        h[70..72].copy_from_slice(&self.datatype.to_le_bytes());
        h[72..74].copy_from_slice(&self.bitpix.to_le_bytes());
        for (i, p) in self.pixdim.iter().enumerate() {
            h[76 + 4 * i..80 + 4 * i].copy_from_slice(&p.to_le_bytes());
        }
        h[108..112].copy_from_slice(&self.vox_offset.to_le_bytes());
        h[344..348].copy_from_slice(&self.magic);
        h
    }

    /// Header, the 4-byte extension flag and `data`.
    fn with(&self, data: &[u8]) -> Vec<u8> {
        let mut b = self.header();
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(data);
        b
    }

    /// A 2x3x4 f32 volume with these voxel values.
    fn f32_volume(values: &[f32]) -> Vec<u8> {
        Nii::new(&[2, 3, 4], 16, 32).with(&values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())
    }
}

fn good_nii() -> Vec<u8> {
    Nii::f32_volume(&(0..24).map(|i| i as f32).collect::<Vec<_>>())
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    c.extend_from_slice(&crc.sum().to_be_bytes());
    c
}

/// An 8-bit gray PNG of `w` x `h` whose IDAT holds `rows` (filter bytes included).
fn png(w: u32, h: u32, rows: &[u8]) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(rows).unwrap();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(png_chunk(b"IHDR", &ihdr));
    out.extend(png_chunk(b"IDAT", &z.finish().unwrap()));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

fn good_png() -> Vec<u8> {
    png(3, 2, &[0, 1, 2, 3, 0, 4, 5, 6])
}

/// A torch-style zip: `archive/data.pkl`, `archive/data/<key>` and optionally `byteorder`.
fn pth_zip(pkl: &[u8], storages: &[(&str, &[u8])], byteorder: Option<&str>) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("archive/data.pkl", opts).unwrap();
    w.write_all(pkl).unwrap();
    if let Some(b) = byteorder {
        w.start_file("archive/byteorder", opts).unwrap();
        w.write_all(b.as_bytes()).unwrap();
    }
    for (k, data) in storages {
        w.start_file(format!("archive/data/{k}"), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Pickle opcodes for an int (BININT1 / LONG1 with 8 bytes).
fn int(v: i64) -> Vec<u8> {
    if (0..256).contains(&v) {
        vec![b'K', v as u8]
    } else {
        let mut o = vec![0x8a, 8];
        o.extend_from_slice(&v.to_le_bytes());
        o
    }
}

fn short_str(s: &str) -> Vec<u8> {
    let mut o = vec![0x8c, s.len() as u8];
    o.extend_from_slice(s.as_bytes());
    o
}

/// One state-dict entry: `(key, storage class, storage key, size, stride)`.
type Entry<'a> = (&'a str, &'a str, &'a str, &'a [i64], &'a [i64]);

/// `{key: _rebuild_tensor_v2(storage(class, skey), offset, size, stride, False, {})}` for each
/// entry, as `torch.save` writes it (protocol 2).
fn state_dict_pickle(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    for (key, class, skey, size, stride) in entries {
        p.extend(short_str(key));
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        p.extend(short_str("storage"));
        p.extend_from_slice(format!("ctorch\n{class}\n").as_bytes());
        p.extend(short_str(skey));
        p.extend(short_str("cpu"));
        p.extend(int(4));
        p.extend_from_slice(b"tQ");
        p.extend(int(0));
        p.push(b'(');
        for &d in size.iter() {
            p.extend(int(d));
        }
        p.extend_from_slice(b"t(");
        for &s in stride.iter() {
            p.extend(int(s));
        }
        p.extend_from_slice(b"t\x89}tR");
    }
    p.extend_from_slice(b"u.");
    p
}

fn f32_storage() -> Vec<u8> {
    [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A one-tensor checkpoint over a 4-element f32 storage.
fn one_tensor(size: &[i64], stride: &[i64]) -> Vec<u8> {
    pth_zip(&state_dict_pickle(&[("w", "FloatStorage", "0", size, stride)]), &[("0", &f32_storage())], None)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(common::fixture(name)).unwrap()
}

// ----- the table ----------------------------------------------------------------------------------

type Check = fn(&Error) -> bool;

struct Row {
    what: &'static str,
    run: Box<dyn Fn() -> Result<(), Error>>,
    want: Check,
}

fn row(what: &'static str, run: impl Fn() -> Result<(), Error> + 'static, want: Check) -> Row {
    Row { what, run: Box::new(run), want }
}

fn nii(bytes: Vec<u8>) -> impl Fn() -> Result<(), Error> {
    move || Volume::from_bytes(&bytes, "bad.nii").map(drop)
}

fn nii_with(f: impl Fn(&mut Nii)) -> Vec<u8> {
    let mut h = Nii::new(&[2, 3, 4], 16, 32);
    f(&mut h);
    h.with(&[0u8; 96])
}

fn pth(bytes: Vec<u8>) -> impl Fn() -> Result<(), Error> {
    move || read_pth_bytes(&bytes, "bad.pth").map(drop)
}

fn img(bytes: Vec<u8>) -> impl Fn() -> Result<(), Error> {
    move || decode_image(&bytes, ColorMode::Rgb, "bad.png").map(drop)
}

fn table() -> Vec<Row> {
    use Error as E;
    let good = good_nii();
    let mut one_short = good.clone();
    one_short.pop();
    let mut bad_crc = gz(&good);
    let n = bad_crc.len();
    bad_crc[n - 6] ^= 0xff;
    let mut bad_deflate = gz(&good);
    bad_deflate[12] ^= 0x55;
    let cut_gz = gz(&good)[..40].to_vec();
    let mut png_bad_crc = good_png();
    png_bad_crc[29] ^= 1;
    let huge_png = png(100_000, 100_000, &[0; 16]);
    let zero_png = png(0, 2, &[0, 0]);
    let jpeg_cut = {
        let mut j = vec![0xff, 0xd8, 0xff, 0xe0, 0, 16];
        j.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        j
    };
    let tiny = fixture("tiny_state_dict.pth");
    let tiny_cut = tiny[..tiny.len() / 2].to_vec();
    let f32_store = f32_storage();

    vec![
        // NIfTI headers.
        row("nii: empty", nii(vec![]), |e| matches!(e, E::Truncated { what: "header", .. })),
        row("nii: 100 bytes", nii(good[..100].to_vec()), |e| {
            matches!(e, E::Truncated { what: "header", .. })
        }),
        row("nii: garbage sizeof_hdr", nii(vec![7; 400]), |e| matches!(e, E::NiftiHeader { .. })),
        row("nii: NIfTI-2", nii(nii_with(|h| h.sizeof_hdr = 540)), |e| matches!(e, E::NiftiHeader { .. })),
        row("nii: magic ni1", nii(nii_with(|h| h.magic = *b"ni1\0")), |e| matches!(e, E::NiftiHeader { .. })),
        row("nii: dim[0] = 0", nii(nii_with(|h| h.dim[0] = 0)), |e| matches!(e, E::NiftiHeader { .. })),
        row("nii: dim[0] = 8", nii(nii_with(|h| h.dim[0] = 8)), |e| matches!(e, E::NiftiHeader { .. })),
        row("nii: negative dim", nii(nii_with(|h| h.dim[2] = -3)), |e| matches!(e, E::NiftiHeader { .. })),
        row("nii: 2-D", nii(nii_with(|h| h.dim = [2, 4, 6, 1, 1, 1, 1, 1])), |e| {
            matches!(e, E::NotAVolume { ndim: 2, .. })
        }),
        row("nii: 4-D, 2 time points", nii(nii_with(|h| h.dim = [4, 2, 3, 2, 2, 1, 1, 1])), |e| {
            matches!(e, E::NotAVolume { ndim: 4, .. })
        }),
        row("nii: zero dim", nii(nii_with(|h| h.dim[3] = 0)), |e| matches!(e, E::ZeroDim { .. })),
        row(
            "nii: 32767^3 f64 (281 TB)",
            nii(nii_with(|h| {
                h.dim = [3, 32767, 32767, 32767, 1, 1, 1, 1];
                h.datatype = 64;
                h.bitpix = 64;
            })),
            |e| matches!(e, E::TooLarge { .. }),
        ),
        row(
            "nii: 32767x32767x2 (8 GiB) in 400 bytes",
            nii(nii_with(|h| h.dim = [3, 32767, 32767, 2, 1, 1, 1, 1])),
            |e| matches!(e, E::Truncated { what: "voxel data", .. }),
        ),
        row(
            "nii.gz: 32767x32767x2 (8 GiB) in a small gzip",
            nii(gz(&nii_with(|h| h.dim = [3, 32767, 32767, 2, 1, 1, 1, 1]))),
            |e| matches!(e, E::Truncated { what: "gzip stream (voxel data)", .. }),
        ),
        row("nii: complex64", nii(nii_with(|h| h.datatype = 32)), |e| {
            matches!(e, E::UnsupportedDataType { code: 32, .. })
        }),
        row("nii: RGB24", nii(nii_with(|h| h.datatype = 128)), |e| {
            matches!(e, E::UnsupportedDataType { code: 128, .. })
        }),
        row("nii: datatype 999", nii(nii_with(|h| h.datatype = 999)), |e| {
            matches!(e, E::UnsupportedDataType { .. })
        }),
        row("nii: zero spacing", nii(nii_with(|h| h.pixdim[1] = 0.0)), |e| matches!(e, E::Spacing { .. })),
        row("nii: negative spacing", nii(nii_with(|h| h.pixdim[2] = -1.0)), |e| {
            matches!(e, E::Spacing { .. })
        }),
        row("nii: NaN spacing", nii(nii_with(|h| h.pixdim[3] = f32::NAN)), |e| {
            matches!(e, E::Spacing { .. })
        }),
        row("nii: Inf spacing", nii(nii_with(|h| h.pixdim[1] = f32::INFINITY)), |e| {
            matches!(e, E::Spacing { .. })
        }),
        row("nii: NaN vox_offset", nii(nii_with(|h| h.vox_offset = f32::NAN)), |e| {
            matches!(e, E::NiftiHeader { .. })
        }),
        row("nii: negative vox_offset", nii(nii_with(|h| h.vox_offset = -4.0)), |e| {
            matches!(e, E::NiftiHeader { .. })
        }),
        row("nii: fractional vox_offset", nii(nii_with(|h| h.vox_offset = 352.5)), |e| {
            matches!(e, E::NiftiHeader { .. })
        }),
        row("nii: 1 GB extension", nii(nii_with(|h| h.vox_offset = 1e9)), |e| {
            matches!(e, E::NiftiHeader { .. })
        }),
        row("nii: vox_offset past the end", nii(nii_with(|h| h.vox_offset = 4096.0)), |e| {
            matches!(e, E::Truncated { what: "header extensions", .. })
        }),
        row("nii: voxel data one byte short", nii(one_short), |e| {
            matches!(e, E::Truncated { what: "voxel data", .. })
        }),
        row(
            "nii: NaN and Inf voxels",
            nii(Nii::f32_volume(
                &(0..24).map(|i| [1.0, f32::NAN, f32::NEG_INFINITY][i % 3]).collect::<Vec<_>>(),
            )),
            |e| matches!(e, E::NonFinite { count: 16, first: [1, 0, 0], .. }),
        ),
        row(
            "nii: f64 voxels overflowing f32",
            nii(Nii::new(&[1, 1, 1], 64, 64).with(&1e300f64.to_le_bytes())),
            |e| matches!(e, E::NonFinite { count: 1, .. }),
        ),
        row("nii.gz: bad CRC", nii(bad_crc), |e| matches!(e, E::Gzip { .. })),
        row("nii.gz: bad deflate data", nii(bad_deflate), |e| {
            matches!(e, E::Gzip { .. } | E::Truncated { .. })
        }),
        row("nii.gz: cut short", nii(cut_gz), |e| matches!(e, E::Truncated { .. })),
        // Slices, labels, windows, axes.
        row(
            "slice: index past the end",
            move || Volume::from_bytes(&good_nii(), "t")?.slice(Axis::Z, 4).map(drop),
            |e| matches!(e, E::Slice { axis: "Z", index: 4, .. }),
        ),
        row(
            "slice: data/dims mismatch",
            || extract_slice(&[0u8; 5], [2, 3, 1], Axis::X, 0).map(drop),
            |e| matches!(e, E::Slice { .. }),
        ),
        row(
            "slice: insert of the wrong shape",
            || {
                insert_slice(
                    &mut [0u8; 6],
                    [2, 3, 1],
                    Axis::Z,
                    0,
                    &Slice { data: vec![0; 6], width: 3, height: 2 },
                )
            },
            |e| matches!(e, E::Slice { .. }),
        ),
        row(
            "labels: wrong count",
            move || Volume::from_bytes(&good_nii(), "t")?.encode_labels(Labels::U8(&[1; 23])).map(drop),
            |e| matches!(e, E::InvalidArgument { op: "write_labels", .. }),
        ),
        row(
            "window: lower >= upper",
            || HuWindow::new(80.0, 80.0).map(drop),
            |e| matches!(e, E::InvalidArgument { .. }),
        ),
        row(
            "window: NaN bound",
            || HuWindow::new(f32::NAN, 1.0).map(drop),
            |e| matches!(e, E::InvalidArgument { .. }),
        ),
        row(
            "window: infinite width",
            || HuWindow::from_level_width(0.0, f32::INFINITY).map(drop),
            |e| matches!(e, E::InvalidArgument { .. }),
        ),
        row(
            "window: unknown preset",
            || HuWindow::preset("lung").map(drop),
            |e| matches!(e, E::InvalidArgument { .. }),
        ),
        row(
            "window: percentile 101",
            || percentile_window(&mut [1.0], 0.0, 101.0).map(drop),
            |e| matches!(e, E::InvalidArgument { .. }),
        ),
        row(
            "window: inverted percentiles",
            || percentile_window(&mut [1.0], 60.0, 40.0).map(drop),
            |e| matches!(e, E::InvalidArgument { .. }),
        ),
        row(
            "window: NaN value",
            || mri_window(&mut [1.0, f32::NAN]).map(drop),
            |e| matches!(e, E::InvalidArgument { .. }),
        ),
        row("axis: unknown", || "w".parse::<Axis>().map(drop), |e| matches!(e, E::InvalidArgument { .. })),
        // Images.
        row("image: empty", img(vec![]), |e| matches!(e, E::Image { .. })),
        row("image: text", img(b"hello, not an image".to_vec()), |e| matches!(e, E::Image { .. })),
        row("image: PNG truncated", img(good_png()[..40].to_vec()), |e| matches!(e, E::Image { .. })),
        row("image: PNG bad CRC", img(png_bad_crc), |e| matches!(e, E::Image { .. })),
        row("image: PNG zero width", img(zero_png), |e| matches!(e, E::Image { .. } | E::EmptyImage { .. })),
        row("image: PNG 1e5 x 1e5 (30 GB)", img(huge_png), |e| matches!(e, E::Image { .. })),
        row("image: JPEG truncated", img(jpeg_cut), |e| matches!(e, E::Image { .. })),
        row(
            "image: new with zero size",
            || Image::new(0, 3, 1, vec![]).map(drop),
            |e| matches!(e, E::InvalidArgument { .. }),
        ),
        row(
            "image: new with 2 channels",
            || Image::new(1, 1, 2, vec![0, 0]).map(drop),
            |e| matches!(e, E::InvalidArgument { .. }),
        ),
        row(
            "image: new with wrong length",
            || Image::new(2, 2, 3, vec![0; 11]).map(drop),
            |e| matches!(e, E::InvalidArgument { .. }),
        ),
        row(
            "overlay: mask of the wrong size",
            || {
                let im = Image::new(2, 2, 1, vec![0; 4])?;
                render_overlay(&im, &Overlay { mask: Some(&[1; 3]), ..Overlay::default() }).map(drop)
            },
            |e| matches!(e, E::InvalidArgument { .. }),
        ),
        row(
            "overlay: NaN marker",
            || {
                let im = Image::new(2, 2, 1, vec![0; 4])?;
                let m = [Marker { x: f32::NAN, y: 0.0, foreground: true }];
                render_overlay(&im, &Overlay { markers: &m, ..Overlay::default() }).map(drop)
            },
            |e| matches!(e, E::InvalidArgument { .. }),
        ),
        row(
            "mask PNG: zero width",
            || save_mask_png(common::scratch("zero.png"), &[], 0, 4),
            |e| matches!(e, E::InvalidArgument { .. }),
        ),
        // .pth checkpoints.
        row("pth: empty", pth(vec![]), |e| matches!(e, E::Zip { .. })),
        row("pth: not a zip", pth(b"\x80\x02}q\x00.".to_vec()), |e| matches!(e, E::Zip { .. })),
        row("pth: truncated zip", pth(tiny_cut), |e| matches!(e, E::Zip { .. })),
        row("pth: no data.pkl", pth(pth_zip(b".", &[], None).replace_name()), |e| {
            matches!(e, E::Layout { .. })
        }),
        row("pth: big-endian", pth(pth_zip(b"}.", &[], Some("big"))), |e| matches!(e, E::Layout { .. })),
        row("pth: not a dict", pth(fixture("not_a_dict.pth")), |e| matches!(e, E::Layout { .. })),
        row("pth: dict without tensors", pth(pth_zip(b"}K\x01K\x02s.", &[], None)), |e| {
            matches!(e, E::Layout { .. })
        }),
        row("pth: storage entry missing", pth(fixture("missing_storage.pth")), |e| {
            matches!(e, E::MissingEntry { .. })
        }),
        row("pth: truncated pickle", pth(pth_zip(b"\x80\x02}q\x00(X\x05\x00\x00", &[], None)), |e| {
            matches!(e, E::Pickle { .. })
        }),
        row("pth: stack underflow", pth(pth_zip(b"s.", &[], None)), |e| matches!(e, E::Pickle { .. })),
        row("pth: unknown opcode", pth(pth_zip(b"I12\n.", &[], None)), |e| {
            matches!(e, E::UnknownOpcode { opcode: b'I', .. })
        }),
        row("pth: os.system", pth(fixture("os_system.pth")), |e| matches!(e, E::UnsafeGlobal { .. })),
        row("pth: builtins.eval", pth(pth_zip(b"\x8c\x08builtins\x8c\x04eval\x93.", &[], None)), |e| {
            matches!(e, E::UnsafeGlobal { .. })
        }),
        row("pth: negative size", pth(one_tensor(&[-2, 2], &[2, 1])), |e| matches!(e, E::Pickle { .. })),
        row("pth: negative stride", pth(one_tensor(&[2, 2], &[2, -1])), |e| matches!(e, E::Pickle { .. })),
        row("pth: size/stride ranks differ", pth(one_tensor(&[4], &[1, 1])), |e| {
            matches!(e, E::Pickle { .. })
        }),
        row("pth: size 2^40 x 2^40", pth(one_tensor(&[1 << 40, 1 << 40], &[1, 1])), |e| {
            matches!(e, E::TooLarge { .. })
        }),
        row("pth: 64 GB view over 16 bytes", pth(one_tensor(&[1 << 17, 1 << 17], &[1 << 17, 1])), |e| {
            matches!(e, E::StorageTooSmall { .. })
        }),
        row(
            "pth: stride arithmetic overflows",
            pth(one_tensor(&[2, 2, 2], &[i64::MAX, i64::MAX, i64::MAX])),
            |e| matches!(e, E::TooLarge { .. }),
        ),
        row("pth: view past its storage", pth(fixture("strided_past_end.pth")), |e| {
            matches!(e, E::StorageTooSmall { .. })
        }),
        row("pth: storage too small", pth(fixture("storage_too_small.pth")), |e| {
            matches!(e, E::StorageTooSmall { .. })
        }),
        row(
            "pth: storage key ../x",
            pth(pth_zip(&state_dict_pickle(&[("w", "FloatStorage", "../x", &[4], &[1])]), &[], None)),
            |e| matches!(e, E::Pickle { .. }),
        ),
        row(
            "pth: complex storage",
            pth(pth_zip(&state_dict_pickle(&[("w", "ComplexFloatStorage", "0", &[2], &[1])]), &[], None)),
            |e| matches!(e, E::UnsafeGlobal { .. }),
        ),
        row(
            "pth: duplicate key",
            pth(pth_zip(
                &state_dict_pickle(&[
                    ("w", "FloatStorage", "0", &[4], &[1]),
                    ("w", "FloatStorage", "0", &[2], &[1]),
                ]),
                &[("0", &f32_store)],
                None,
            )),
            |e| matches!(e, E::Layout { .. }),
        ),
    ]
}

/// Renames `archive/data.pkl` so that the archive has no pickle.
trait ReplaceName {
    fn replace_name(self) -> Vec<u8>;
}

impl ReplaceName for Vec<u8> {
    fn replace_name(self) -> Vec<u8> {
        let needle = b"archive/data.pkl";
        let mut out = self;
        let mut i = 0;
        while i + needle.len() <= out.len() {
            if &out[i..i + needle.len()] == needle {
                out[i + needle.len() - 3..i + needle.len()].copy_from_slice(b"txt");
            }
            i += 1;
        }
        out
    }
}

#[test]
fn every_bad_input_gets_its_typed_error() {
    let mut failures = Vec::new();
    let rows = table();
    for r in &rows {
        let t = std::time::Instant::now();
        match (r.run)() {
            Ok(()) => failures.push(format!("{}: accepted", r.what)),
            Err(e) if (r.want)(&e) => {}
            Err(e) => failures.push(format!("{}: wrong error {e:?}", r.what)),
        }
        assert!(t.elapsed().as_secs() < 5, "{} took {:?}", r.what, t.elapsed());
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// The good inputs the table corrupts are themselves accepted (so each row tests one fault).
#[test]
fn the_uncorrupted_inputs_are_accepted() {
    let v = Volume::from_bytes(&good_nii(), "t").unwrap();
    assert_eq!(v.dims(), [2, 3, 4]);
    assert_eq!(Volume::from_bytes(&gz(&good_nii()), "t").unwrap().data(), v.data());
    let im = decode_image(&good_png(), ColorMode::Gray, "t").unwrap();
    assert_eq!((im.width(), im.height(), im.data()), (3, 2, &[1u8, 2, 3, 4, 5, 6][..]));
    let ck = read_pth_bytes(&one_tensor(&[2, 2], &[1, 2]), "t").unwrap();
    assert_eq!(ck.tensors()[0].1.shape, [2, 2]);
    assert_eq!(ck.tensors()[0].1.data, medsa_io::TensorData::F32(vec![1.0, 3.0, 2.0, 4.0]));
    // Windows on an all-zero (empty) volume leave it at zero.
    let mut zeros = vec![0.0f32; 8];
    assert_eq!(mri_window(&mut zeros).unwrap(), (0.0, 0.0));
    assert!(zeros.iter().all(|&v| v == 0.0));
    // Overlay marks outside the image are clipped.
    let im = Image::new(4, 3, 3, vec![9; 36]).unwrap();
    let m = [Marker { x: -50.0, y: 1e9, foreground: false }];
    let b = [[-10.0, -10.0, 1e9, 1e9]];
    let out = render_overlay(&im, &Overlay { markers: &m, boxes: &b, mask: None }).unwrap();
    assert_eq!((out.width(), out.height()), (4, 3));
}
