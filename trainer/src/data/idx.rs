//! Reading and writing IDX files (the MNIST file format), raw or gzip-compressed.
//!
//! An IDX file is a big-endian header followed by the data:
//!
//! ```text
//! magic: u32 = 0x0000TTDD   TT = data type (0x08 = unsigned byte), DD = number of dimensions
//! dims:  DD x u32           sizes, outermost first
//! data:  prod(dims) x u8    row-major
//! ```
//!
//! iocane reads two kinds: images, `u8 [n, rows, cols]` (magic `0x00000803`) or
//! channels-last `u8 [n, rows, cols, channels]` (magic `0x00000804`), and labels,
//! `u8 [n]` (magic `0x00000801`).
//!
//! Compression is detected from the content (gzip magic `1f 8b`), never from the file
//! name. Decompression is capped at [`MAX_DECOMPRESSED_BYTES`], and the sizes declared
//! in a header are checked against the actual length before anything is allocated for
//! the payload, so a corrupt or hostile header cannot trigger a huge allocation.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::DataError;

/// IDX magic of an image file `u8 [n, rows, cols]`.
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic of a channels-last image file `u8 [n, rows, cols, channels]`.
pub const IMAGES_NHWC_MAGIC: u32 = 0x0000_0804;
/// IDX magic of a label file `u8 [n]`.
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// The IDX data-type byte for unsigned bytes, the only type iocane reads.
pub const TYPE_U8: u8 = 0x08;
/// Upper bound on the size of a decompressed (or raw) IDX file: 1 GiB.
pub const MAX_DECOMPRESSED_BYTES: u64 = 1 << 30;

/// The two leading bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A decoded IDX image file: `count` images of `rows x cols x channels` bytes each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
    /// Channels per pixel (1 for a 3-dimensional file).
    pub channels: usize,
    /// Pixels, `count * rows * cols * channels` bytes, NHWC.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// Bytes per image (`rows * cols * channels`).
    pub fn image_len(&self) -> usize {
        self.rows * self.cols * self.channels
    }
}

/// Whether `bytes` starts with the gzip magic `1f 8b`.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// Returns the IDX bytes of `bytes`: gunzipped if it is a gzip stream (capped at
/// [`MAX_DECOMPRESSED_BYTES`]), borrowed unchanged otherwise. `file` names the source
/// in error messages.
pub fn decompress<'a>(bytes: &'a [u8], file: &str) -> Result<Cow<'a, [u8]>, DataError> {
    decompress_with_limit(bytes, file, MAX_DECOMPRESSED_BYTES)
}

/// Like [`decompress`] with an explicit cap on the decompressed size (and on the raw
/// size of an uncompressed input).
pub fn decompress_with_limit<'a>(bytes: &'a [u8], file: &str, limit: u64) -> Result<Cow<'a, [u8]>, DataError> {
    if !is_gzip(bytes) {
        if bytes.len() as u64 > limit {
            return Err(DataError::TooLarge { file: file.to_string(), limit });
        }
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    // Read one byte past the limit to tell "exactly at the limit" from "over it".
    MultiGzDecoder::new(bytes)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|source| DataError::Gzip { file: file.to_string(), source })?;
    if out.len() as u64 > limit {
        return Err(DataError::TooLarge { file: file.to_string(), limit });
    }
    Ok(Cow::Owned(out))
}

/// Reads a whole file, refusing files larger than [`MAX_DECOMPRESSED_BYTES`].
fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_DECOMPRESSED_BYTES {
        return Err(DataError::TooLarge { file: path.display().to_string(), limit: MAX_DECOMPRESSED_BYTES });
    }
    std::fs::read(path).map_err(io)
}

/// A parsed IDX header.
struct Header {
    magic: u32,
    dims: Vec<usize>,
    /// Header length in bytes (4 + 4 * number of dimensions).
    len: usize,
}

/// Human-readable name of an IDX data-type byte.
fn type_name(t: u8) -> &'static str {
    match t {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "unknown",
    }
}

/// Parses the header of raw IDX `bytes` and checks that the payload is exactly as long
/// as the dimensions declare. `allowed_dims` lists the accepted dimension counts.
fn parse_header(
    bytes: &[u8],
    file: &str,
    expected_magic: &str,
    allowed_dims: &[u8],
    what: &str,
) -> Result<Header, DataError> {
    if bytes.len() < 4 {
        return Err(DataError::Truncated { file: file.to_string(), expected: 4, actual: bytes.len() as u64 });
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::BadMagic { file: file.to_string(), found: magic, expected: expected_magic.to_string() });
    }
    if bytes[2] != TYPE_U8 {
        return Err(DataError::WrongDataType {
            file: file.to_string(),
            found: bytes[2],
            found_name: type_name(bytes[2]),
        });
    }
    let ndims = bytes[3];
    if !allowed_dims.contains(&ndims) {
        return Err(DataError::DimensionCount {
            file: file.to_string(),
            magic,
            found: ndims,
            expected: what.to_string(),
        });
    }
    let len = 4 + 4 * usize::from(ndims);
    if bytes.len() < len {
        return Err(DataError::Truncated { file: file.to_string(), expected: len as u128, actual: bytes.len() as u64 });
    }
    let dims: Vec<usize> =
        bytes[4..len].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    // u128 cannot overflow: at most 4 factors below 2^32 plus a small header.
    let expected = dims.iter().fold(1u128, |acc, &d| acc * d as u128) + len as u128;
    let actual = bytes.len() as u64;
    if (actual as u128) < expected {
        return Err(DataError::Truncated { file: file.to_string(), expected, actual });
    }
    if (actual as u128) > expected {
        return Err(DataError::TrailingBytes { file: file.to_string(), expected: expected as u64, actual });
    }
    Ok(Header { magic, dims, len })
}

/// Parses an IDX image file from `bytes` (raw or gzip). `file` names the source in
/// error messages.
pub fn parse_images(bytes: &[u8], file: &str) -> Result<IdxImages, DataError> {
    let raw = decompress(bytes, file)?;
    let h = parse_header(
        &raw,
        file,
        "0x00000803 (images) or 0x00000804 (NHWC images)",
        &[3, 4],
        "3 (images [n, rows, cols]) or 4 (images [n, rows, cols, channels])",
    )?;
    debug_assert!(h.magic == IMAGES_MAGIC || h.magic == IMAGES_NHWC_MAGIC);
    let channels = h.dims.get(3).copied().unwrap_or(1);
    let (rows, cols) = (h.dims[1], h.dims[2]);
    // With zero images the payload check above does not bound the image size: check it here,
    // so that `image_len()` cannot overflow and an empty image is not a dataset.
    let image = rows.checked_mul(cols).and_then(|n| n.checked_mul(channels));
    if image.is_none_or(|n| n == 0 || n as u64 > MAX_DECOMPRESSED_BYTES) {
        return Err(DataError::ImageShape { file: file.to_string(), rows, cols, channels });
    }
    let pixels = match raw {
        Cow::Owned(mut v) => {
            v.drain(..h.len);
            v
        }
        Cow::Borrowed(b) => b[h.len..].to_vec(),
    };
    Ok(IdxImages { count: h.dims[0], rows, cols, channels, pixels })
}

/// Parses an IDX label file `u8 [n]` from `bytes` (raw or gzip). `file` names the source
/// in error messages.
pub fn parse_labels(bytes: &[u8], file: &str) -> Result<Vec<u8>, DataError> {
    let raw = decompress(bytes, file)?;
    let h = parse_header(&raw, file, "0x00000801 (labels)", &[1], "1 (labels [n])")?;
    Ok(match raw {
        Cow::Owned(mut v) => {
            v.drain(..h.len);
            v
        }
        Cow::Borrowed(b) => b[h.len..].to_vec(),
    })
}

/// Reads an IDX image file (raw or gzip) from `path`.
pub fn read_images(path: impl AsRef<Path>) -> Result<IdxImages, DataError> {
    let path = path.as_ref();
    parse_images(&read_file(path)?, &path.display().to_string())
}

/// Reads an IDX label file (raw or gzip) from `path`.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<u8>, DataError> {
    let path = path.as_ref();
    parse_labels(&read_file(path)?, &path.display().to_string())
}

/// Encodes images as raw IDX: magic `0x00000803` when `channels == 1`, otherwise
/// `0x00000804` with dimensions `[count, rows, cols, channels]`.
///
/// # Panics
/// If `pixels.len() != count * rows * cols * channels` or a dimension exceeds `u32`.
pub fn encode_images(count: usize, rows: usize, cols: usize, channels: usize, pixels: &[u8]) -> Vec<u8> {
    assert_eq!(
        pixels.len(),
        count * rows * cols * channels,
        "pixel buffer does not match [{count}, {rows}, {cols}, {channels}]"
    );
    let mut dims = vec![count, rows, cols];
    let magic = if channels == 1 {
        IMAGES_MAGIC
    } else {
        dims.push(channels);
        IMAGES_NHWC_MAGIC
    };
    encode(magic, &dims, pixels)
}

/// Encodes labels as raw IDX (magic `0x00000801`).
///
/// # Panics
/// If there are more than `u32::MAX` labels.
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    encode(LABELS_MAGIC, &[labels.len()], labels)
}

fn encode(magic: u32, dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    out.extend_from_slice(&magic.to_be_bytes());
    for &d in dims {
        let d = u32::try_from(d).expect("IDX dimension exceeds u32");
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Gzip-compresses `bytes` (level 9, mtime 0, no file name: byte-reproducible).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// Writes `bytes` (already-encoded IDX) to `path`, gzip-compressed if `compress`.
fn write_file(path: &Path, bytes: &[u8], compress: bool) -> Result<(), DataError> {
    let data = if compress { Cow::Owned(gzip(bytes)) } else { Cow::Borrowed(bytes) };
    std::fs::write(path, &data).map_err(|source| DataError::Io { path: path.to_path_buf(), source })
}

/// Writes an IDX image file to `path` (see [`encode_images`]), gzip-compressed if
/// `compress`.
pub fn write_images(path: impl AsRef<Path>, images: &IdxImages, compress: bool) -> Result<(), DataError> {
    let bytes = encode_images(images.count, images.rows, images.cols, images.channels, &images.pixels);
    write_file(path.as_ref(), &bytes, compress)
}

/// Writes an IDX label file to `path`, gzip-compressed if `compress`.
pub fn write_labels(path: impl AsRef<Path>, labels: &[u8], compress: bool) -> Result<(), DataError> {
    write_file(path.as_ref(), &encode_labels(labels), compress)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_images() -> Vec<u8> {
        encode_images(3, 2, 2, 1, &(0..12).collect::<Vec<u8>>())
    }

    #[test]
    fn header_layout_is_big_endian() {
        let b = small_images();
        assert_eq!(&b[..16], &[0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2]);
        assert_eq!(b.len(), 16 + 12);
        let l = encode_labels(&[1, 2]);
        assert_eq!(l, vec![0, 0, 8, 1, 0, 0, 0, 2, 1, 2]);
    }

    #[test]
    fn parses_raw_and_gzip_alike() {
        let b = small_images();
        let a = parse_images(&b, "a").unwrap();
        let g = parse_images(&gzip(&b), "g").unwrap();
        assert_eq!(a, g);
        assert_eq!((a.count, a.rows, a.cols, a.channels), (3, 2, 2, 1));
        assert_eq!(a.pixels, (0..12).collect::<Vec<u8>>());
    }

    #[test]
    fn nhwc_images_round_trip() {
        let px: Vec<u8> = (0..2 * 3 * 2 * 3).map(|i| i as u8).collect();
        let b = encode_images(2, 3, 2, 3, &px);
        assert_eq!(&b[..4], &IMAGES_NHWC_MAGIC.to_be_bytes());
        let a = parse_images(&b, "x").unwrap();
        assert_eq!((a.count, a.rows, a.cols, a.channels, a.image_len()), (2, 3, 2, 3, 18));
        assert_eq!(a.pixels, px);
    }

    #[test]
    fn every_prefix_is_truncated() {
        let b = small_images();
        for n in 0..b.len() {
            match parse_images(&b[..n], "t") {
                Err(DataError::Truncated { expected, actual, .. }) => {
                    assert_eq!(actual, n as u64);
                    assert!(expected > n as u128);
                }
                other => panic!("prefix {n}: {other:?}"),
            }
        }
    }

    #[test]
    fn gzip_bomb_is_capped() {
        let zeros = vec![0u8; 1 << 20];
        let gz = gzip(&zeros);
        assert!(gz.len() < 1 << 14);
        match decompress_with_limit(&gz, "bomb", 1000) {
            Err(DataError::TooLarge { limit: 1000, .. }) => {}
            other => panic!("{other:?}"),
        }
        // Exactly at the limit is fine.
        assert_eq!(decompress_with_limit(&gz, "ok", 1 << 20).unwrap().len(), 1 << 20);
    }

    #[test]
    fn zero_images_of_overflowing_size_are_an_image_shape_error() {
        // Zero images make the payload empty whatever rows * cols * channels is.
        let mut b = IMAGES_NHWC_MAGIC.to_be_bytes().to_vec();
        for d in [0u32, u32::MAX, u32::MAX, u32::MAX] {
            b.extend_from_slice(&d.to_be_bytes());
        }
        let e = parse_images(&b, "huge").unwrap_err();
        assert!(matches!(e, DataError::ImageShape { .. }), "{e:?}");
        // An empty image is refused too; zero images of a sane shape are fine.
        assert!(matches!(parse_images(&encode(IMAGES_MAGIC, &[2, 0, 5], &[]), "e"), Err(DataError::ImageShape { .. })));
        let none = parse_images(&encode_images(0, 28, 28, 1, &[]), "n").unwrap();
        assert_eq!((none.count, none.image_len()), (0, 784));
    }

    #[test]
    fn wrong_type_and_dims() {
        let mut b = small_images();
        b[2] = 0x0D;
        let e = parse_images(&b, "f.idx").unwrap_err();
        assert!(matches!(e, DataError::WrongDataType { found: 0x0D, .. }), "{e:?}");
        assert!(e.to_string().contains("f32"), "{e}");
        let e = parse_labels(&small_images(), "l.idx").unwrap_err();
        assert!(matches!(e, DataError::DimensionCount { found: 3, .. }), "{e:?}");
    }
}
