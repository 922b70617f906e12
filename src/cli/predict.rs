//! `iocane predict MODEL IMAGE...`: run the int8 model on image files (PNG, PGM or raw bytes).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use iocane_runtime::{Model, Shape};
use serde::Serialize;

/// Largest image file read (bytes), checked before reading: far above any model input.
pub const MAX_IMAGE_FILE: u64 = 64 << 20;

/// Flags of `iocane predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The int8 model blob (model.icn).
    pub model: PathBuf,
    /// Images: PNG (8-bit gray or RGB; palettes, low bit depths and 16-bit are converted, an
    /// opaque alpha channel is dropped), PGM (P5 binary or P2 text, maxval <= 255), or raw
    /// NHWC u8 bytes (`.bin`, `.raw`, or any file that is neither). Each must have the
    /// model's height, width and channels.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Print one JSON array (file, class, label, logits per image) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One image's prediction.
#[derive(Debug, Serialize)]
pub struct Prediction {
    /// The image file, as given.
    pub file: String,
    /// The runtime's class (argmax, ties to the lowest index).
    pub class: usize,
    /// The class's label from the model's metadata, if it has labels.
    pub label: Option<String>,
    /// The int32 logits.
    pub logits: Vec<i32>,
}

/// Runs `iocane predict`: every image is read and checked before anything is printed.
pub fn run(a: &PredictArgs) -> Result<u8> {
    let bytes = read_capped(&a.model, MAX_IMAGE_FILE.max(16 << 20))?;
    let model = Model::parse(&bytes).with_context(|| format!("{} is not a valid iocane model", a.model.display()))?;
    let images: Vec<Vec<u8>> = a.images.iter().map(|p| load_image(p, model.input_shape())).collect::<Result<_>>()?;
    let mut arena = vec![0u8; model.arena_size()];
    let mut out = Vec::with_capacity(images.len());
    for (path, px) in a.images.iter().zip(&images) {
        let mut logits = vec![0i32; model.num_classes()];
        let class = model.run(px, &mut arena, &mut logits).with_context(|| format!("running {}", path.display()))?;
        out.push(Prediction {
            file: path.display().to_string(),
            class,
            label: model.label(class).map(str::to_string),
            logits,
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for p in &out {
            let label = p.label.as_deref().map(|l| format!(" ({l})")).unwrap_or_default();
            println!("{}: class {}{label}, logits {:?}", p.file, p.class, p.logits);
        }
    }
    Ok(super::EXIT_OK)
}

/// Reads a file of at most `cap` bytes (the size is checked first).
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if len > cap {
        bail!("{} has {len} bytes, more than the {cap} this command reads", path.display());
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads an image file and checks it has the model's shape; returns its NHWC u8 pixels.
pub fn load_image(path: &Path, shape: Shape) -> Result<Vec<u8>> {
    let bytes = read_capped(path, MAX_IMAGE_FILE)?;
    let raw_ext = path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "bin" | "raw" | "u8"));
    let px = if !raw_ext && bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(&bytes, shape)
    } else if !raw_ext && is_pgm(&bytes) {
        decode_pgm(&bytes, shape)
    } else if bytes.len() == shape.len() {
        Ok(bytes)
    } else {
        Err(format!(
            "a raw image of {} bytes; the model takes {} u8 pixels ({}x{}x{}, NHWC)",
            bytes.len(),
            shape.len(),
            shape.h,
            shape.w,
            shape.c
        ))
    };
    px.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn shape_error(what: &str, (h, w, c): (usize, usize, usize), shape: Shape) -> String {
    format!("{what} is {h}x{w}x{c} (HxWxC); the model takes {}x{}x{}", shape.h, shape.w, shape.c)
}

/// Decodes a PNG to NHWC u8 with the model's shape, checking the header's size before the
/// pixels are decoded.
pub fn decode_png(bytes: &[u8], shape: Shape) -> Result<Vec<u8>, String> {
    let mut dec = png::Decoder::new_with_limits(bytes, png::Limits { bytes: 16 << 20 });
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().map_err(|e| format!("not a readable PNG: {e}"))?;
    let (color, _) = reader.output_color_type();
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    let channels = match color {
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => 1,
        png::ColorType::Rgb | png::ColorType::Rgba | png::ColorType::Indexed => 3,
    };
    if (h, w, channels) != (shape.h, shape.w, shape.c) {
        return Err(shape_error("the PNG", (h, w, channels), shape));
    }
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| format!("decoding the PNG: {e}"))?;
    buf.truncate(info.buffer_size());
    let stride = match color {
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgba => 4,
        _ => return if buf.len() == shape.len() { Ok(buf) } else { Err("truncated PNG pixel data".into()) },
    };
    if buf.len() != shape.len() / channels * stride {
        return Err("truncated PNG pixel data".into());
    }
    if buf.chunks_exact(stride).any(|p| p[stride - 1] != 255) {
        return Err("the PNG has a transparent alpha channel (the model takes opaque pixels)".into());
    }
    Ok(buf.chunks_exact(stride).flat_map(|p| p[..stride - 1].to_vec()).collect())
}

fn is_pgm(bytes: &[u8]) -> bool {
    matches!(bytes, [b'P', b'2' | b'5', c, ..] if c.is_ascii_whitespace())
}

/// Decodes a PGM (P5 binary or P2 ASCII, maxval 1..=255, comments allowed) to u8 pixels:
/// values are scaled to 0..=255 when maxval is below 255. The model must take one channel.
pub fn decode_pgm(bytes: &[u8], shape: Shape) -> Result<Vec<u8>, String> {
    let mut pos = 2;
    let mut field = |what: &str| -> Result<usize, String> {
        loop {
            while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
                pos += 1;
            }
            if pos < bytes.len() && bytes[pos] == b'#' {
                while pos < bytes.len() && bytes[pos] != b'\n' {
                    pos += 1;
                }
            } else {
                break;
            }
        }
        let start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        std::str::from_utf8(&bytes[start..pos])
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 9)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad PGM header: no {what}"))
    };
    let (w, h, maxval) = (field("width")?, field("height")?, field("maxval")?);
    if !(1..=255).contains(&maxval) {
        return Err(format!("PGM maxval {maxval}: only 8-bit PGMs (maxval 1..=255) are read"));
    }
    if (h, w, 1) != (shape.h, shape.w, shape.c) {
        return Err(shape_error("the PGM", (h, w, 1), shape));
    }
    let scale = |v: usize| ((v * 255 + maxval / 2) / maxval) as u8;
    let n = shape.len();
    let px: Vec<u8> = if bytes[1] == b'5' {
        // One whitespace byte after maxval, then exactly n bytes.
        let data = bytes.get(pos + 1..).unwrap_or_default();
        if data.len() < n {
            return Err(format!("PGM pixel data: {} bytes, expected {n}", data.len()));
        }
        if data.iter().take(n).any(|&v| v as usize > maxval) {
            return Err(format!("PGM pixel above maxval {maxval}"));
        }
        data[..n].iter().map(|&v| scale(v as usize)).collect()
    } else {
        let text = std::str::from_utf8(&bytes[pos..]).map_err(|_| "P2 PGM data is not ASCII".to_string())?;
        let mut px = Vec::with_capacity(n);
        for t in text.split_ascii_whitespace() {
            let v: usize = t.parse().ok().filter(|&v| v <= maxval).ok_or_else(|| format!("bad P2 PGM value `{t}`"))?;
            if px.len() == n {
                return Err(format!("P2 PGM has more than {n} values"));
            }
            px.push(scale(v));
        }
        if px.len() != n {
            return Err(format!("P2 PGM has {} values, expected {n}", px.len()));
        }
        px
    };
    Ok(px)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Shape = Shape::new(2, 3, 1);

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 2000, failure_persistence: None, ..Default::default() })]

        /// Any bytes: an error or an image of the model's size, never a panic.
        #[test]
        fn decoders_never_panic(mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), kind in 0u8..3) {
            match kind {
                0 => bytes.splice(0..0, b"\x89PNG\r\n\x1a\n".iter().copied()).for_each(drop),
                1 => bytes.splice(0..0, b"P5 3 2 ".iter().copied()).for_each(drop),
                _ => bytes.splice(0..0, b"P2\n".iter().copied()).for_each(drop),
            }
            for px in [decode_png(&bytes, S), decode_pgm(&bytes, S)].into_iter().flatten() {
                proptest::prop_assert_eq!(px.len(), S.len());
            }
        }
    }

    #[test]
    fn pgm_binary_text_and_comments() {
        let mut p5 = b"P5\n# made by hand\n3 2\n255\n".to_vec();
        p5.extend_from_slice(&[0, 1, 2, 3, 4, 255]);
        assert_eq!(decode_pgm(&p5, S).unwrap(), vec![0, 1, 2, 3, 4, 255]);
        let p2 = b"P2 3 2 15\n0 15 1\n2 3 4\n";
        assert_eq!(decode_pgm(p2, S).unwrap(), vec![0, 255, 17, 34, 51, 68]);
        for (bad, needle) in [
            (&b"P5\n3 2\n65535\n"[..], "8-bit"),
            (b"P5\n4 2\n255\n12345678", "is 2x4x1 (HxWxC); the model takes 2x3x1"),
            (b"P5\n3 2\n255\n123", "bytes"),
            (b"P2 3 2 9\n1 2 3 4 5", "5 values"),
            (b"P2 3 2 9\n1 2 3 4 5 10", "bad P2"),
            (b"P5\n99999999999999999999 2\n255\n", "width"),
            (b"P5 ", "width"),
        ] {
            let e = decode_pgm(bad, S).unwrap_err();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn png_gray_rgb_alpha_and_shape() {
        let gray = iocane_certify::report::png_bytes(&[1, 2, 3, 4, 5, 6], (2, 3, 1)).unwrap();
        assert_eq!(decode_png(&gray, S).unwrap(), vec![1, 2, 3, 4, 5, 6]);
        let e = decode_png(&gray, Shape::new(3, 2, 1)).unwrap_err();
        assert!(e.contains("2x3x1") && e.contains("3x2x1"), "{e}");
        let rgb = iocane_certify::report::png_bytes(&[9; 18], (2, 3, 3)).unwrap();
        let e = decode_png(&rgb, S).unwrap_err();
        assert!(e.contains("2x3x3"), "{e}");
        assert_eq!(decode_png(&rgb, Shape::new(2, 3, 3)).unwrap(), vec![9; 18]);
        assert!(decode_png(&gray[..gray.len() / 2], S).is_err());
        assert!(decode_png(b"\x89PNG\r\n\x1a\nnot really", S).is_err());
    }
}
