//! The counterexample gallery (`gallery.png` in a report folder): for each broken sample (up
//! to [`GALLERY_CAP`]) the clean image, the adversarial image and their difference amplified
//! to the full range, side by side, captioned with the sample index, the true class, the
//! int8 model's class of the adversarial image and the attack that found it.
//!
//! Text is drawn with a built-in 5x7 bitmap font ([`glyph`]), so no font library is needed.

use crate::gate::SampleResult;

/// Most samples a gallery shows (the first ones by index).
pub const GALLERY_CAP: usize = 16;

/// The 5x7 glyph of `c` (case-insensitive): seven rows, bit 4 the leftmost column. Characters
/// without a glyph are drawn as `?`.
pub fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ' ' => [0; 7],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '/' => [0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04],
    }
}

/// A white RGB canvas for picture grids with captions in the built-in font: the gallery,
/// and the picture grids of `iocane study` (saliency maps, generated datasets).
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    /// A white canvas of `w` x `h` pixels.
    pub fn new(w: usize, h: usize) -> Canvas {
        Canvas { w, h, px: vec![255; w * h * 3] }
    }

    /// Width and height in pixels.
    pub fn size(&self) -> (usize, usize) {
        (self.w, self.h)
    }

    /// The canvas as PNG bytes (RGB).
    pub fn png(&self) -> Result<Vec<u8>, String> {
        crate::report::png_bytes(&self.px, (self.h, self.w, 3))
    }

    /// The canvas as PNG bytes, grayscale (a third of the data) when every pixel is grey,
    /// RGB otherwise.
    pub fn png_gray_if_grey(&self) -> Result<Vec<u8>, String> {
        let px = &self.px;
        if px.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]) {
            let grey: Vec<u8> = px.chunks_exact(3).map(|p| p[0]).collect();
            crate::report::png_bytes(&grey, (self.h, self.w, 1))
        } else {
            self.png()
        }
    }

    /// Sets one pixel; pixels outside the canvas are ignored.
    pub fn set(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        if x < self.w && y < self.h {
            let i = (y * self.w + x) * 3;
            self.px[i..i + 3].copy_from_slice(&rgb);
        }
    }

    /// Draws `text` with its top-left corner at (x, y), each font pixel `scale` pixels wide
    /// (a character is 6 font pixels wide and 7 high).
    pub fn text(&mut self, x: usize, y: usize, text: &str, scale: usize, rgb: [u8; 3]) {
        for (n, c) in text.chars().enumerate() {
            let g = glyph(c);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.set(x + (n * 6 + col) * scale + dx, y + row * scale + dy, rgb);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Draws a `tw` x `th` tile of RGB pixels at (x, y), each pixel a `scale`-pixel square,
    /// with a one-pixel grey frame around it (`x` and `y` must be at least 1).
    pub fn tile(&mut self, x: usize, y: usize, (tw, th): (usize, usize), rgb: &[[u8; 3]], scale: usize) {
        for ty in 0..th {
            for tx in 0..tw {
                for d in 0..scale * scale {
                    self.set(x + tx * scale + d % scale, y + ty * scale + d / scale, rgb[ty * tw + tx]);
                }
            }
        }
        let (fw, fh) = (tw * scale, th * scale);
        for i in 0..fw + 2 {
            self.set(x + i - 1, y - 1, [160; 3]);
            self.set(x + i - 1, y + fh, [160; 3]);
        }
        for j in 0..fh + 2 {
            self.set(x - 1, y + j - 1, [160; 3]);
            self.set(x + fw, y + j - 1, [160; 3]);
        }
    }
}

/// An NHWC image as RGB tiles: 1 channel grey, 3 channels RGB, any other count its channels
/// side by side in grey (as the counterexample PNGs). Returns (width, height, pixels).
pub fn to_rgb(px: &[u8], (h, w, c): (usize, usize, usize)) -> (usize, usize, Vec<[u8; 3]>) {
    match c {
        1 => (w, h, px.iter().map(|&v| [v; 3]).collect()),
        3 => (w, h, px.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect()),
        _ => {
            let mut out = Vec::with_capacity(h * w * c);
            for y in 0..h {
                for ch in 0..c {
                    out.extend((0..w).map(|x| [px[(y * w + x) * c + ch]; 3]));
                }
            }
            (w * c, h, out)
        }
    }
}

/// The samples a gallery shows: those with a counterexample and a clean image, first by
/// index, at most [`GALLERY_CAP`].
pub fn gallery_samples(samples: &[SampleResult]) -> Vec<&SampleResult> {
    samples.iter().filter(|s| s.counterexample.is_some() && s.clean.is_some()).take(GALLERY_CAP).collect()
}

/// The gallery's difference gain: a change of `k` levels is drawn as the full range.
pub fn gain(k: u8) -> usize {
    (127 / usize::from(k.max(1))).max(1)
}

/// Renders the gallery of `samples` (images of `shape` = (h, w, c), radius `k` levels) as
/// PNG bytes; `None` when no sample has a counterexample and its clean image.
pub fn gallery_png(samples: &[SampleResult], shape: (usize, usize, usize), k: u8) -> Option<Result<Vec<u8>, String>> {
    let shown = gallery_samples(samples);
    if shown.is_empty() {
        return None;
    }
    let len = shape.0.checked_mul(shape.1).and_then(|n| n.checked_mul(shape.2));
    if shown.iter().any(|s| {
        Some(s.clean.as_ref().map_or(0, Vec::len)) != len || Some(s.counterexample.as_ref().map_or(0, Vec::len)) != len
    }) {
        return Some(Err(format!("a gallery image is not one {shape:?} image")));
    }
    let (tw, th, _) = to_rgb(shown[0].clean.as_deref().unwrap_or_default(), shape);
    // Tiles about 112 pixels across; a caption line of 2x-scaled 5x7 text above each row.
    let scale = (112 / tw.max(th).max(1)).clamp(1, 8);
    let (fw, fh) = (tw * scale, th * scale);
    let (gap, text) = (12, 2);
    let caption_h = 7 * text + 8;
    let header_h = 7 * text + 14;
    // Columns wide enough for their titles ("ADVERSARIAL" is the longest).
    let col = fw.max(11 * 6 * text);
    let width = (3 * col + 4 * gap).max(gap + 28 * 6 * text);
    let row_h = caption_h + fh + gap;
    let height = header_h + shown.len() * row_h;
    if width.checked_mul(height).is_none_or(|n| n > 64 << 20) {
        return Some(Err(format!("a {width}x{height} gallery is too large")));
    }
    let mut cv = Canvas::new(width, height);
    let g = gain(k);
    let titles = ["CLEAN", "ADVERSARIAL", &format!("DIFF X{g}")];
    for (i, t) in titles.iter().enumerate() {
        cv.text(gap + i * (col + gap), 6, t, text, [60; 3]);
    }
    for (r, s) in shown.iter().enumerate() {
        let y = header_h + r * row_h;
        let clean = s.clean.as_deref().unwrap_or_default();
        let adv = s.counterexample.as_deref().unwrap_or_default();
        let attack = s.broken_by.first().map_or("?", String::as_str);
        let class = s.adversarial_class.map_or("?".to_string(), |c| c.to_string());
        let caption = format!("#{} TRUE {} INT8 {} BY {}", s.index, s.label, class, attack);
        cv.text(gap, y, &caption, text, [0; 3]);
        let diff: Vec<u8> = clean
            .iter()
            .zip(adv)
            .map(|(&a, &b)| (128 + (i64::from(b) - i64::from(a)) * g as i64).clamp(0, 255) as u8)
            .collect();
        for (i, img) in [clean, adv, &diff].iter().enumerate() {
            let (_, _, rgb) = to_rgb(img, shape);
            cv.tile(gap + i * (col + gap), y + caption_h, (tw, th), &rgb, scale);
        }
    }
    Some(cv.png())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::SampleVerdict;

    fn sample(index: usize, clean: Vec<u8>, adv: Vec<u8>) -> SampleResult {
        SampleResult {
            index,
            label: 3,
            predicted: 3,
            verdict: SampleVerdict::Falsified,
            broken_by: vec!["pgd".into(), "square".into()],
            counterexample: Some(adv),
            counterexample_file: Some(crate::gate::counterexample_file(index)),
            adversarial_class: Some(5),
            clean: Some(clean),
            bound_margin: Some(-2),
            certified_by: None,
            seconds: 0.0,
        }
    }

    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut r = png::Decoder::new(png).read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[test]
    fn every_caption_character_has_a_distinct_glyph() {
        let chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ #->:/.,()=+_";
        let glyphs: Vec<[u8; 7]> = chars.chars().map(glyph).collect();
        for (i, a) in glyphs.iter().enumerate() {
            assert!(a.iter().all(|&r| r < 0x20), "{:?} wider than 5 columns", chars.as_bytes()[i] as char);
            for (j, b) in glyphs.iter().enumerate().skip(i + 1) {
                assert_ne!(
                    a,
                    b,
                    "{:?} and {:?} look the same",
                    chars.as_bytes()[i] as char,
                    chars.as_bytes()[j] as char
                );
            }
        }
        assert_eq!(glyph('a'), glyph('A'));
        assert_eq!(glyph('~'), glyph('\u{1F600}'));
    }

    #[test]
    fn gallery_shows_clean_adversarial_and_amplified_difference() {
        let clean = vec![100u8; 4 * 4];
        let mut adv = clean.clone();
        adv[0] = 104; // +4 levels at the top-left pixel
        adv[15] = 96; // -4 at the bottom-right
        let samples = vec![sample(7, clean.clone(), adv.clone())];
        let png = gallery_png(&samples, (4, 4, 1), 4).unwrap().unwrap();
        let (w, h, px) = decode(&png);
        let at = |x: usize, y: usize| &px[(y * w as usize + x) * 3..(y * w as usize + x) * 3 + 3];
        // Tiles of 4x4 pixels scaled by 8 (the largest scale); the difference is 128 +- 4 * 31.
        let (scale, gap, top) = (8usize, 12usize, (7 * 2 + 14) + (7 * 2 + 8));
        let col = 11 * 6 * 2; // the title "ADVERSARIAL" is wider than the tiles
        let diff_x = gap + 2 * (col + gap);
        assert_eq!(at(gap + 1, top + 1), [100; 3], "clean tile");
        assert_eq!(at(gap + col + gap + 1, top + 1), [104; 3], "adversarial tile");
        assert_eq!(at(diff_x + 1, top + 1), [128 + 4 * 31; 3], "amplified difference, +4");
        assert_eq!(at(diff_x + 4 * scale - 2, top + 4 * scale - 2), [128 - 4 * 31; 3], "amplified difference, -4");
        assert_eq!(at(diff_x + 2 * scale, top + 2 * scale), [128; 3], "unchanged pixels are mid grey");
        // The caption row holds dark text pixels, the area right of it stays white.
        let caption_y = 7 * 2 + 14;
        let dark = (caption_y..caption_y + 14)
            .flat_map(|y| (0..w as usize).map(move |x| (x, y)))
            .filter(|&(x, y)| at(x, y) == [0; 3])
            .count();
        assert!(dark > 100, "{dark} caption pixels");
        assert!(h as usize >= top + 4 * scale);
        // Nothing to show: no gallery; more than the cap: the first GALLERY_CAP samples.
        assert!(gallery_png(&[], (4, 4, 1), 4).is_none());
        let many: Vec<SampleResult> = (0..GALLERY_CAP + 5).map(|i| sample(i, clean.clone(), adv.clone())).collect();
        assert_eq!(gallery_samples(&many).len(), GALLERY_CAP);
        let (_, h2, _) = decode(&gallery_png(&many, (4, 4, 1), 4).unwrap().unwrap());
        let row = (7 * 2 + 8 + 4 * scale + gap) as u32;
        assert_eq!(h2 - h, (GALLERY_CAP as u32 - 1) * row, "one row per shown sample");
        // Wrong-sized images are an error, not a panic; two channels are tiled.
        assert!(gallery_png(&[sample(1, vec![0; 3], vec![0; 3])], (4, 4, 1), 4).unwrap().is_err());
        assert!(gallery_png(&[sample(1, vec![0; 32], vec![9; 32])], (4, 4, 2), 4).unwrap().is_ok());
    }
}
