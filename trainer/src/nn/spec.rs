//! Architecture specs: the layer op set, validation, the compact text form, presets,
//! parameter/MAC counts and a printable summary.

use super::NnError;
use serde::{Deserialize, Serialize};
use std::fmt;

fn one2() -> [usize; 2] {
    [1, 1]
}

/// One layer of an architecture. Serialised as JSON with the tag `"op"`, e.g.
/// `{"op":"Conv2d","filters":8,"kernel":[3,3],"stride":[2,2],"padding":[1,1,1,1]}`
/// (for the convolutions `stride` defaults to `[1,1]` and `padding` to zeros).
///
/// `kernel` and `stride` are `[height, width]`; `padding` is `[top, left, bottom, right]`.
/// The [`Display`](fmt::Display) form is the compact notation (see [`ArchSpec`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum LayerSpec {
    /// Fully connected layer on a flat `1x1xN` input: `units` outputs.
    Dense {
        /// Number of outputs.
        units: usize,
    },
    /// 2-D convolution with zero padding; weights OHWI.
    Conv2d {
        /// Number of output channels.
        filters: usize,
        /// `[kh, kw]`.
        kernel: [usize; 2],
        /// `[sh, sw]`.
        #[serde(default = "one2")]
        stride: [usize; 2],
        /// `[top, left, bottom, right]`.
        #[serde(default)]
        padding: [usize; 4],
    },
    /// Depthwise 2-D convolution, channel multiplier 1; weights `[kh][kw][c]`.
    DepthwiseConv2d {
        /// `[kh, kw]`.
        kernel: [usize; 2],
        /// `[sh, sw]`.
        #[serde(default = "one2")]
        stride: [usize; 2],
        /// `[top, left, bottom, right]`.
        #[serde(default)]
        padding: [usize; 4],
    },
    /// Max pooling, no padding.
    MaxPool2d {
        /// `[kh, kw]`.
        kernel: [usize; 2],
        /// `[sh, sw]`.
        stride: [usize; 2],
    },
    /// Average pooling, no padding; divides by `kh * kw`.
    AvgPool2d {
        /// `[kh, kw]`.
        kernel: [usize; 2],
        /// `[sh, sw]`.
        stride: [usize; 2],
    },
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `[h, w, c] -> [1, 1, h*w*c]` (no data movement in NHWC).
    Flatten,
}

/// Upper bound on the number of parameters (weights + biases) of a whole architecture:
/// 16,777,216 (`2^24`, 64 MiB of `f32`). Checked by [`ArchSpec::validate`] with checked
/// arithmetic, layer by layer, before any parameter buffer is allocated; iocane's models for
/// microcontrollers are several orders of magnitude smaller.
pub const MAX_PARAMS: usize = 1 << 24;

/// Upper bound on the number of values of one sample's activation `h * w * c`, at the input
/// and after every layer: 16,777,216 (`2^24`). Checked by [`ArchSpec::validate`] with checked
/// arithmetic before any activation buffer is allocated.
pub const MAX_ACTIVATION: usize = 1 << 24;

/// Upper bound on the multiply-accumulates per sample of a whole architecture: 2^30
/// (about 1.07 G; `cnn-m` on 28x28x1 needs 1.38 M). It also bounds the im2col buffer of every
/// convolution (at most `macs / filters` values per sample). Checked by
/// [`ArchSpec::validate`] with checked arithmetic.
pub const MAX_MACS: usize = 1 << 30;

/// `floor((inp + pad - k) / s) + 1`, or `None` if the kernel is larger than the padded input
/// (or the padded size overflows).
fn conv_out(inp: usize, pad: usize, k: usize, s: usize) -> Option<usize> {
    iocane_runtime::geometry::output_len(inp, pad, k, s)
}

/// `h * w * c`, or `None` on overflow.
fn volume([h, w, c]: [usize; 3]) -> Option<usize> {
    h.checked_mul(w)?.checked_mul(c)
}

impl LayerSpec {
    /// Whether the layer has weights and a bias (Dense, Conv2d, DepthwiseConv2d).
    pub fn has_params(&self) -> bool {
        matches!(self, LayerSpec::Dense { .. } | LayerSpec::Conv2d { .. } | LayerSpec::DepthwiseConv2d { .. })
    }

    /// Whether the layer is an activation (Relu, Relu6).
    pub fn is_activation(&self) -> bool {
        matches!(self, LayerSpec::Relu | LayerSpec::Relu6)
    }

    /// Kernel, stride and padding of a windowed layer (convs and pools; pools have zero
    /// padding), `None` for Dense / activations / Flatten.
    pub fn window(&self) -> Option<([usize; 2], [usize; 2], [usize; 4])> {
        match *self {
            LayerSpec::Conv2d { kernel, stride, padding, .. }
            | LayerSpec::DepthwiseConv2d { kernel, stride, padding } => Some((kernel, stride, padding)),
            LayerSpec::MaxPool2d { kernel, stride } | LayerSpec::AvgPool2d { kernel, stride } => {
                Some((kernel, stride, [0; 4]))
            }
            _ => None,
        }
    }

    /// Output shape `[h, w, c]` for an input of shape `input`, or a message saying why the
    /// layer cannot be applied to it.
    pub fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String> {
        let [h, w, c] = input;
        if let Some((k, s, p)) = self.window() {
            if k[0] == 0 || k[1] == 0 {
                return Err(format!("kernel must be >= 1, got {}x{}", k[0], k[1]));
            }
            if s[0] == 0 || s[1] == 0 {
                return Err(format!("stride must be >= 1, got {}x{}", s[0], s[1]));
            }
            if p[0] >= k[0] || p[2] >= k[0] || p[1] >= k[1] || p[3] >= k[1] {
                return Err(format!("padding {:?} must be smaller than the kernel {}x{} on each side", p, k[0], k[1]));
            }
            let oh = p[0].checked_add(p[2]).and_then(|pad| conv_out(h, pad, k[0], s[0]));
            let ow = p[1].checked_add(p[3]).and_then(|pad| conv_out(w, pad, k[1], s[1]));
            let (oh, ow) = match (oh, ow) {
                (Some(a), Some(b)) => (a, b),
                _ => {
                    return Err(format!(
                        "kernel {}x{} is larger than the padded input {}x{}",
                        k[0],
                        k[1],
                        h.saturating_add(p[0]).saturating_add(p[2]),
                        w.saturating_add(p[1]).saturating_add(p[3])
                    ))
                }
            };
            let oc = match *self {
                LayerSpec::Conv2d { filters, .. } => {
                    if filters == 0 {
                        return Err("filters must be >= 1".into());
                    }
                    filters
                }
                _ => c,
            };
            return Ok([oh, ow, oc]);
        }
        match *self {
            LayerSpec::Dense { units } => {
                if units == 0 {
                    return Err("units must be >= 1".into());
                }
                if h != 1 || w != 1 {
                    return Err(format!("Dense needs a flat 1x1xN input, got {h}x{w}x{c}; insert `flatten` before it"));
                }
                Ok([1, 1, units])
            }
            LayerSpec::Flatten => match volume(input) {
                Some(n) => Ok([1, 1, n]),
                None => Err(format!("{h}x{w}x{c} values overflow")),
            },
            _ => Ok(input),
        }
    }

    /// Lengths `(weights, bias)` of the layer's parameter buffers for input shape `input`
    /// (`(0, 0)` for layers without parameters). The input shape must be valid; a weight
    /// count that overflows `usize` saturates at `usize::MAX` (see
    /// [`LayerSpec::checked_param_lens`]).
    pub fn param_lens(&self, input: [usize; 3]) -> (usize, usize) {
        self.checked_param_lens(input).unwrap_or((usize::MAX, usize::MAX))
    }

    /// Like [`LayerSpec::param_lens`], or `None` if a length overflows `usize`.
    pub fn checked_param_lens(&self, input: [usize; 3]) -> Option<(usize, usize)> {
        let c = input[2];
        match *self {
            LayerSpec::Dense { units } => Some((volume(input)?.checked_mul(units)?, units)),
            LayerSpec::Conv2d { filters, kernel, .. } => {
                Some((volume([filters, kernel[0], kernel[1]])?.checked_mul(c)?, filters))
            }
            LayerSpec::DepthwiseConv2d { kernel, .. } => Some((volume([kernel[0], kernel[1], c])?, c)),
            _ => Some((0, 0)),
        }
    }

    /// Fan-in of one output unit (used for He initialisation); 0 for parameterless layers.
    pub fn fan_in(&self, input: [usize; 3]) -> usize {
        let [h, w, c] = input;
        match *self {
            LayerSpec::Dense { .. } => h * w * c,
            LayerSpec::Conv2d { kernel, .. } => kernel[0] * kernel[1] * c,
            LayerSpec::DepthwiseConv2d { kernel, .. } => kernel[0] * kernel[1],
            _ => 0,
        }
    }

    /// Multiply-accumulates per sample (weights times inputs of Conv/Depthwise/Dense;
    /// pools, activations and biases count 0). The input shape must be valid.
    pub fn macs(&self, input: [usize; 3]) -> usize {
        let out = match self.output_shape(input) {
            Ok(o) => o,
            Err(_) => return 0,
        };
        let [oh, ow, oc] = out;
        match *self {
            LayerSpec::Dense { units } => units * input[0] * input[1] * input[2],
            LayerSpec::Conv2d { kernel, .. } => oh * ow * oc * kernel[0] * kernel[1] * input[2],
            LayerSpec::DepthwiseConv2d { kernel, .. } => oh * ow * oc * kernel[0] * kernel[1],
            _ => 0,
        }
    }

    /// Parses one layer in compact notation (see [`ArchSpec`] for the grammar).
    pub fn parse(token: &str) -> Result<LayerSpec, String> {
        let t = token.trim().to_ascii_lowercase();
        match t.as_str() {
            "relu" => return Ok(LayerSpec::Relu),
            "relu6" => return Ok(LayerSpec::Relu6),
            "flatten" => return Ok(LayerSpec::Flatten),
            "" => return Err("empty layer".into()),
            _ => {}
        }
        let name_end = t.find(|ch: char| !ch.is_ascii_alphabetic()).unwrap_or(t.len());
        let (name, rest) = t.split_at(name_end);
        // Known names may swallow a following field letter ("dwk3"): split them off.
        let (name, rest) = {
            let known = ["dense", "conv", "dw", "maxpool", "avgpool"];
            match known.iter().find(|k| name.starts_with(*k)) {
                Some(k) => (&name[..k.len()], &t[k.len()..]),
                None => (name, rest),
            }
        };
        let fields = parse_fields(rest)?;
        let get = |letter: char| fields.iter().find(|f| f.0 == letter).map(|f| f.1.as_str());
        let allow = |letters: &str| -> Result<(), String> {
            for (l, _) in &fields {
                if !letters.contains(*l) {
                    let shown = if *l == '#' { "a leading number".to_string() } else { format!("`{l}`") };
                    return Err(format!("`{name}` does not take {shown}"));
                }
            }
            Ok(())
        };
        match name {
            "dense" => {
                allow("#")?;
                let units = parse_num(get('#').ok_or("expected `dense<units>`, e.g. `dense10`")?)?;
                Ok(LayerSpec::Dense { units })
            }
            "conv" => {
                allow("#ksp")?;
                let filters = parse_num(get('#').ok_or("expected `conv<filters>k<kernel>`, e.g. `conv8k3`")?)?;
                let kernel = parse_pair(get('k').ok_or("missing kernel `k<size>`, e.g. `conv8k3`")?)?;
                let stride = get('s').map(parse_pair).transpose()?.unwrap_or([1, 1]);
                let padding = get('p').map(parse_pad).transpose()?.unwrap_or([0; 4]);
                Ok(LayerSpec::Conv2d { filters, kernel, stride, padding })
            }
            "dw" | "maxpool" | "avgpool" => {
                allow(if name == "dw" { "#ksp" } else { "#ks" })?;
                if get('#').is_some() && get('k').is_some() {
                    return Err("kernel given twice".into());
                }
                let kernel = parse_pair(
                    get('#').or(get('k')).ok_or_else(|| format!("expected `{name}<kernel>`, e.g. `{name}3`"))?,
                )?;
                let stride_default = if name == "dw" { [1, 1] } else { kernel };
                let stride = get('s').map(parse_pair).transpose()?.unwrap_or(stride_default);
                Ok(match name {
                    "dw" => LayerSpec::DepthwiseConv2d {
                        kernel,
                        stride,
                        padding: get('p').map(parse_pad).transpose()?.unwrap_or([0; 4]),
                    },
                    "maxpool" => LayerSpec::MaxPool2d { kernel, stride },
                    _ => LayerSpec::AvgPool2d { kernel, stride },
                })
            }
            _ => Err(format!(
                "unknown layer `{name}` (expected dense, conv, dw, maxpool, avgpool, relu, relu6 or flatten)"
            )),
        }
    }

    /// Parses a comma-separated list of layers in compact notation.
    pub fn parse_list(text: &str) -> Result<Vec<LayerSpec>, NnError> {
        if text.trim().is_empty() {
            return Err(NnError::InvalidArch("no layers given".into()));
        }
        text.split(',')
            .enumerate()
            .map(|(index, tok)| {
                LayerSpec::parse(tok).map_err(|msg| NnError::Parse { index, token: tok.trim().to_string(), msg })
            })
            .collect()
    }
}

/// Splits e.g. `8k3s2p1` into `[('#', "8"), ('k', "3"), ('s', "2"), ('p', "1")]`.
fn parse_fields(rest: &str) -> Result<Vec<(char, String)>, String> {
    let mut out: Vec<(char, String)> = Vec::new();
    let mut chars = rest.chars().peekable();
    let mut first = true;
    while let Some(&ch) = chars.peek() {
        let letter = if ch.is_ascii_digit() {
            if !first {
                return Err(format!("unexpected number in `{rest}`"));
            }
            '#'
        } else if ch.is_ascii_alphabetic() {
            chars.next();
            ch
        } else {
            return Err(format!("unexpected character `{ch}`"));
        };
        first = false;
        let mut val = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_digit() || c == 'x' || c == '_' {
                val.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if val.is_empty() {
            return Err(format!("`{letter}` needs a value"));
        }
        if out.iter().any(|f| f.0 == letter) {
            return Err(format!("`{letter}` given twice"));
        }
        out.push((letter, val));
    }
    Ok(out)
}

fn parse_num(s: &str) -> Result<usize, String> {
    s.parse::<usize>().map_err(|_| format!("`{s}` is not a non-negative integer"))
}

fn parse_pair(s: &str) -> Result<[usize; 2], String> {
    match s.split_once('x') {
        None => {
            let v = parse_num(s)?;
            Ok([v, v])
        }
        Some((a, b)) => Ok([parse_num(a)?, parse_num(b)?]),
    }
}

fn parse_pad(s: &str) -> Result<[usize; 4], String> {
    if s.contains('_') {
        let parts: Vec<&str> = s.split('_').collect();
        if parts.len() != 4 {
            return Err(format!("padding `{s}` must be `p<all>`, `p<v>x<h>` or `p<top>_<left>_<bottom>_<right>`"));
        }
        Ok([parse_num(parts[0])?, parse_num(parts[1])?, parse_num(parts[2])?, parse_num(parts[3])?])
    } else {
        let [v, h] = parse_pair(s)?;
        Ok([v, h, v, h])
    }
}

fn fmt_pair(p: [usize; 2]) -> String {
    if p[0] == p[1] {
        format!("{}", p[0])
    } else {
        format!("{}x{}", p[0], p[1])
    }
}

fn fmt_pad(p: [usize; 4]) -> String {
    if p[0] == p[2] && p[1] == p[3] {
        fmt_pair([p[0], p[1]])
    } else {
        format!("{}_{}_{}_{}", p[0], p[1], p[2], p[3])
    }
}

impl fmt::Display for LayerSpec {
    /// The canonical compact notation (parses back to the same layer).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sp = |stride: [usize; 2], padding: [usize; 4], default_stride: [usize; 2]| {
            let mut s = String::new();
            if stride != default_stride {
                s += &format!("s{}", fmt_pair(stride));
            }
            if padding != [0; 4] {
                s += &format!("p{}", fmt_pad(padding));
            }
            s
        };
        match *self {
            LayerSpec::Dense { units } => write!(f, "dense{units}"),
            LayerSpec::Conv2d { filters, kernel, stride, padding } => {
                write!(f, "conv{filters}k{}{}", fmt_pair(kernel), sp(stride, padding, [1, 1]))
            }
            LayerSpec::DepthwiseConv2d { kernel, stride, padding } => {
                write!(f, "dw{}{}", fmt_pair(kernel), sp(stride, padding, [1, 1]))
            }
            LayerSpec::MaxPool2d { kernel, stride } => {
                write!(f, "maxpool{}{}", fmt_pair(kernel), sp(stride, [0; 4], kernel))
            }
            LayerSpec::AvgPool2d { kernel, stride } => {
                write!(f, "avgpool{}{}", fmt_pair(kernel), sp(stride, [0; 4], kernel))
            }
            LayerSpec::Relu => write!(f, "relu"),
            LayerSpec::Relu6 => write!(f, "relu6"),
            LayerSpec::Flatten => write!(f, "flatten"),
        }
    }
}

/// Names accepted by [`ArchSpec::preset`].
pub const PRESETS: [&str; 4] = ["mlp", "cnn-s", "cnn-m", "dwcnn"];

/// A whole architecture: input shape `[h, w, c]`, number of classes and the layers.
///
/// Valid architectures (checked by [`ArchSpec::validate`], which every constructor runs)
/// have positive input dims and `classes >= 1`; every layer applies to its input shape
/// (kernel and stride >= 1, each padding side < kernel, kernel no larger than the padded
/// input, filters/units >= 1); `Dense` only on a flat `1x1xN` tensor (after `flatten`);
/// and the last layer is `Dense` with `units == classes`. Sizes are bounded: at most
/// [`MAX_ACTIVATION`] values per sample at the input and after every layer, and at most
/// [`MAX_PARAMS`] parameters and [`MAX_MACS`] multiply-accumulates per sample in total, all
/// computed with checked arithmetic, so an
/// architecture from the command line, a checkpoint or an ONNX file cannot make the trainer
/// allocate more than that.
///
/// # Compact text form
/// A comma-separated list of layers (case-insensitive, spaces around commas ignored),
/// e.g. `conv8k3s2p1,relu,conv16k3s2p1,relu,flatten,dense10`:
///
/// ```text
/// layer := "dense" N                          Dense{units: N}
///        | "conv" N "k" PAIR ["s" PAIR] ["p" PAD]   Conv2d (stride 1, padding 0 by default)
///        | "dw" PAIR ["s" PAIR] ["p" PAD]     DepthwiseConv2d ("dwk3" also accepted)
///        | "maxpool" PAIR ["s" PAIR]          MaxPool2d (stride defaults to the kernel)
///        | "avgpool" PAIR ["s" PAIR]          AvgPool2d (stride defaults to the kernel)
///        | "relu" | "relu6" | "flatten"
/// PAIR  := N | N "x" N                        square, or height x width
/// PAD   := N | N "x" N | N "_" N "_" N "_" N  all sides | vertical x horizontal | top_left_bottom_right
/// ```
/// The `s` and `p` fields may come in either order. [`ArchSpec::to_compact`] writes the
/// canonical form (defaults omitted), which parses back to the same layers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSpec {
    /// Input shape `[h, w, c]`.
    pub input: [usize; 3],
    /// Number of classes (units of the last Dense layer).
    pub classes: usize,
    /// The layers, in order.
    pub layers: Vec<LayerSpec>,
}

impl ArchSpec {
    /// Builds and validates an architecture.
    pub fn new(input: [usize; 3], classes: usize, layers: Vec<LayerSpec>) -> Result<ArchSpec, NnError> {
        let a = ArchSpec { input, classes, layers };
        a.validate()?;
        Ok(a)
    }

    /// Parses the compact text form (see the [type docs](ArchSpec)) and validates.
    pub fn from_compact(text: &str, input: [usize; 3], classes: usize) -> Result<ArchSpec, NnError> {
        ArchSpec::new(input, classes, LayerSpec::parse_list(text)?)
    }

    /// The canonical compact text form of the layers.
    pub fn to_compact(&self) -> String {
        self.layers.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Parses JSON (`{"input":[28,28,1],"classes":10,"layers":[{"op":"Flatten"}, ...]}`)
    /// and validates.
    pub fn from_json(json: &str) -> Result<ArchSpec, NnError> {
        let a: ArchSpec = serde_json::from_str(json)?;
        a.validate()?;
        Ok(a)
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("ArchSpec serialises")
    }

    /// A named preset for the given input shape and number of classes:
    ///
    /// - `mlp`: `flatten,dense64,relu,dense32,relu,dense<classes>` (784-64-32-10 on MNIST)
    /// - `cnn-s`: `conv8k3s2p1,relu,conv16k3s2p1,relu,flatten,dense<classes>`
    /// - `cnn-m`: `conv16k3p1,relu,maxpool2,conv32k3p1,relu,maxpool2,conv64k3s2p1,relu,flatten,dense64,relu,dense<classes>`
    ///   (89,546 params, 1.38M MACs on 28x28x1)
    /// - `dwcnn`: `conv8k3s2p1,relu6,dw3p1,relu6,conv16k1,relu6,dw3s2p1,relu6,conv32k1,relu6,flatten,dense<classes>`
    ///   (MobileNet-style depthwise-separable blocks)
    pub fn preset(name: &str, input: [usize; 3], classes: usize) -> Result<ArchSpec, NnError> {
        let body = match name.trim().to_ascii_lowercase().as_str() {
            "mlp" => "flatten,dense64,relu,dense32,relu".to_string(),
            "cnn-s" => "conv8k3s2p1,relu,conv16k3s2p1,relu,flatten".to_string(),
            "cnn-m" => {
                "conv16k3p1,relu,maxpool2,conv32k3p1,relu,maxpool2,conv64k3s2p1,relu,flatten,dense64,relu".to_string()
            }
            "dwcnn" => "conv8k3s2p1,relu6,dw3p1,relu6,conv16k1,relu6,dw3s2p1,relu6,conv32k1,relu6,flatten".to_string(),
            _ => return Err(NnError::UnknownPreset(name.to_string())),
        };
        ArchSpec::from_compact(&format!("{body},dense{classes}"), input, classes)
    }

    /// A preset name if `text` is one (see [`ArchSpec::preset`]), else the compact form.
    pub fn resolve(text: &str, input: [usize; 3], classes: usize) -> Result<ArchSpec, NnError> {
        if PRESETS.contains(&text.trim().to_ascii_lowercase().as_str()) {
            ArchSpec::preset(text, input, classes)
        } else {
            ArchSpec::from_compact(text, input, classes)
        }
    }

    /// The layers.
    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// Checks the architecture (see the [type docs](ArchSpec)).
    pub fn validate(&self) -> Result<(), NnError> {
        self.shapes().map(|_| ())
    }

    /// Shapes `[h, w, c]` flowing through the network: `shapes[0]` is the input,
    /// `shapes[i + 1]` the output of layer `i`. Fails exactly when [`ArchSpec::validate`] does.
    pub fn shapes(&self) -> Result<Vec<[usize; 3]>, NnError> {
        if self.input.contains(&0) {
            return Err(NnError::InvalidArch(format!("input shape {:?} must be positive", self.input)));
        }
        if self.classes == 0 {
            return Err(NnError::InvalidArch("classes must be >= 1".into()));
        }
        if self.layers.is_empty() {
            return Err(NnError::InvalidArch("no layers".into()));
        }
        if volume(self.input).is_none_or(|n| n > MAX_ACTIVATION) {
            return Err(NnError::InvalidArch(format!(
                "input shape {:?} has more than {MAX_ACTIVATION} values (the limit per activation)",
                self.input
            )));
        }
        let mut shapes = vec![self.input];
        let mut params = 0usize;
        let mut macs = 0usize;
        for (index, l) in self.layers.iter().enumerate() {
            let cur = *shapes.last().expect("non-empty");
            let err = |msg: String| NnError::InvalidLayer {
                index,
                layer: l.to_string(),
                msg: format!("{msg} (input {}x{}x{})", cur[0], cur[1], cur[2]),
            };
            let out = l.output_shape(cur).map_err(err)?;
            if volume(out).is_none_or(|n| n > MAX_ACTIVATION) {
                return Err(err(format!(
                    "output {}x{}x{} has more than {MAX_ACTIVATION} values (the limit per activation)",
                    out[0], out[1], out[2]
                )));
            }
            let layer_macs = match *l {
                LayerSpec::Dense { .. } => l.checked_param_lens(cur).map(|(w, _)| w),
                LayerSpec::Conv2d { kernel, .. } => {
                    volume(out).and_then(|n| volume([n, kernel[0], kernel[1]])?.checked_mul(cur[2]))
                }
                LayerSpec::DepthwiseConv2d { kernel, .. } => {
                    volume(out).and_then(|n| volume([n, kernel[0], kernel[1]]))
                }
                _ => Some(0),
            };
            macs = match layer_macs.and_then(|n| n.checked_add(macs)) {
                Some(total) if total <= MAX_MACS => total,
                _ => {
                    return Err(err(format!(
                        "{} multiply-accumulates per sample, more than the limit of {MAX_MACS} for a whole network",
                        layer_macs.map_or_else(|| "too many".to_string(), |n| n.to_string())
                    )))
                }
            };
            let layer_params = l.checked_param_lens(cur).and_then(|(w, b)| w.checked_add(b));
            params = match layer_params.and_then(|n| n.checked_add(params)) {
                Some(total) if total <= MAX_PARAMS => total,
                _ => {
                    return Err(err(format!(
                        "{} parameters, more than the limit of {MAX_PARAMS} for a whole network",
                        layer_params.map_or_else(|| "too many".to_string(), |n| n.to_string())
                    )))
                }
            };
            shapes.push(out);
        }
        let last = self.layers.len() - 1;
        match self.layers[last] {
            LayerSpec::Dense { units } if units == self.classes => Ok(shapes),
            LayerSpec::Dense { units } => Err(NnError::InvalidLayer {
                index: last,
                layer: self.layers[last].to_string(),
                msg: format!("the last Dense layer has {units} units but there are {} classes", self.classes),
            }),
            l => Err(NnError::InvalidLayer {
                index: last,
                layer: l.to_string(),
                msg: format!("the last layer must be `dense{}` (logits), not {l}", self.classes),
            }),
        }
    }

    /// Total number of parameters (weights + biases). 0 if the spec is invalid.
    pub fn param_count(&self) -> usize {
        let Ok(shapes) = self.shapes() else { return 0 };
        self.layers
            .iter()
            .zip(&shapes)
            .map(|(l, &s)| {
                let (w, b) = l.param_lens(s);
                w + b
            })
            .sum()
    }

    /// Multiply-accumulates per sample (see [`LayerSpec::macs`]). 0 if the spec is invalid.
    pub fn mac_count(&self) -> usize {
        let Ok(shapes) = self.shapes() else { return 0 };
        self.layers.iter().zip(&shapes).map(|(l, &s)| l.macs(s)).sum()
    }

    /// A table of layers with output shapes, parameter and MAC counts, and totals.
    pub fn summary(&self) -> String {
        let shapes = match self.shapes() {
            Ok(s) => s,
            Err(e) => return format!("invalid architecture: {e}\n"),
        };
        let mut rows: Vec<[String; 5]> =
            vec![["#".into(), "layer".into(), "output".into(), "params".into(), "MACs".into()]];
        rows.push([
            "".into(),
            "input".into(),
            format!("{}x{}x{}", self.input[0], self.input[1], self.input[2]),
            "".into(),
            "".into(),
        ]);
        for (i, l) in self.layers.iter().enumerate() {
            let (w, b) = l.param_lens(shapes[i]);
            let o = shapes[i + 1];
            rows.push([
                i.to_string(),
                l.to_string(),
                format!("{}x{}x{}", o[0], o[1], o[2]),
                group(w + b),
                group(l.macs(shapes[i])),
            ]);
        }
        rows.push(["".into(), "total".into(), "".into(), group(self.param_count()), group(self.mac_count())]);
        let mut widths = [0usize; 5];
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let mut s = String::new();
        for (ri, r) in rows.iter().enumerate() {
            let line = format!(
                "{:>w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
                w4 = widths[4]
            );
            s += line.trim_end();
            s.push('\n');
            if ri == 0 || ri == rows.len() - 2 {
                s += &"-".repeat(widths.iter().sum::<usize>() + 8);
                s.push('\n');
            }
        }
        s
    }
}

/// `1234567` -> `1,234,567`.
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_examples() {
        assert_eq!(
            LayerSpec::parse("conv8k3s2p1").unwrap(),
            LayerSpec::Conv2d { filters: 8, kernel: [3, 3], stride: [2, 2], padding: [1, 1, 1, 1] }
        );
        assert_eq!(
            LayerSpec::parse("conv4k3x5p1_2_0_2s1x2").unwrap(),
            LayerSpec::Conv2d { filters: 4, kernel: [3, 5], stride: [1, 2], padding: [1, 2, 0, 2] }
        );
        assert_eq!(LayerSpec::parse(" MaxPool2 ").unwrap(), LayerSpec::MaxPool2d { kernel: [2, 2], stride: [2, 2] });
        assert_eq!(LayerSpec::parse("maxpool3s2").unwrap(), LayerSpec::MaxPool2d { kernel: [3, 3], stride: [2, 2] });
        assert_eq!(LayerSpec::parse("dwk3s1p1").unwrap(), LayerSpec::parse("dw3p1").unwrap());
        assert!(LayerSpec::parse("conv8").is_err());
        assert!(LayerSpec::parse("dense").is_err());
        assert!(LayerSpec::parse("dense10k3").is_err());
        assert!(LayerSpec::parse("conv8k3k3").is_err());
        assert!(LayerSpec::parse("softmax").is_err());
        assert!(LayerSpec::parse("conv8k3p1_1").is_err());
    }

    #[test]
    fn huge_dense_is_an_error_not_a_capacity_overflow() {
        // issue 10 item 4: `train --arch flatten,dense99999999999999999,dense10`.
        let e = ArchSpec::from_compact("flatten,dense99999999999999999,dense10", [28, 28, 1], 10).unwrap_err();
        assert!(matches!(e, NnError::InvalidLayer { index: 1, .. }), "{e}");
        assert!(e.to_string().contains("limit"), "{e}");
        // Units whose weight count overflows usize are reported the same way.
        let e =
            ArchSpec::from_compact(&format!("flatten,dense{},dense10", usize::MAX / 2), [28, 28, 1], 10).unwrap_err();
        assert!(matches!(e, NnError::InvalidLayer { index: 1, .. }), "{e}");
    }

    #[test]
    fn conv_with_1e17_filters_is_an_error() {
        let json = r#"{"input":[28,28,1],"classes":10,"layers":[{"op":"Conv2d","filters":100000000000000000,"kernel":[3,3]},{"op":"Flatten"},{"op":"Dense","units":10}]}"#;
        let e = ArchSpec::from_json(json).unwrap_err();
        assert!(matches!(e, NnError::InvalidLayer { index: 0, .. }), "{e}");
    }

    #[test]
    fn parameter_limit_is_inclusive() {
        // 1x1x1 input, one Dense of u units: 2u parameters and u activations.
        let at = MAX_PARAMS / 2;
        let ok = ArchSpec::from_compact(&format!("flatten,dense{at}"), [1, 1, 1], at).unwrap();
        assert_eq!(ok.param_count(), MAX_PARAMS);
        let over = at + 1;
        assert!(ArchSpec::from_compact(&format!("flatten,dense{over}"), [1, 1, 1], over).is_err());
    }

    #[test]
    fn oversized_inputs_and_activations_are_errors() {
        let e = ArchSpec::from_compact("flatten,dense10", [1 << 32, 1 << 32, 2], 10).unwrap_err();
        assert!(matches!(e, NnError::InvalidArch(_)), "{e}");
        // A 1x1 conv with many filters: the output activation is over the limit.
        let e = ArchSpec::from_compact(&format!("conv{}k1,flatten,dense2", MAX_ACTIVATION), [2, 2, 1], 2).unwrap_err();
        assert!(matches!(e, NnError::InvalidLayer { index: 0, .. }), "{e}");
    }

    #[test]
    fn mac_limit_bounds_big_convolutions() {
        // 1024x1024 input, 33x33 kernel, 4 filters: few parameters but ~4.3 G MACs.
        let e = ArchSpec::from_compact("conv4k33,maxpool992,flatten,dense2", [1024, 1024, 1], 2).unwrap_err();
        assert!(e.to_string().contains("multiply-accumulates"), "{e}");
        let ok = ArchSpec::from_compact("conv4k33,maxpool224,flatten,dense2", [256, 256, 1], 2).unwrap();
        assert!(ok.mac_count() <= MAX_MACS);
    }

    #[test]
    fn kernel_and_padding_near_usize_max_do_not_overflow() {
        let k = usize::MAX;
        let l = LayerSpec::Conv2d { filters: 1, kernel: [k, k], stride: [1, 1], padding: [k - 1; 4] };
        let a = ArchSpec {
            input: [4, 4, 1],
            classes: 2,
            layers: vec![l, LayerSpec::Flatten, LayerSpec::Dense { units: 2 }],
        };
        assert!(a.validate().is_err());
        assert_eq!(LayerSpec::Dense { units: usize::MAX }.param_lens([2, 1, 1]), (usize::MAX, usize::MAX));
        assert_eq!(LayerSpec::Dense { units: usize::MAX }.checked_param_lens([2, 1, 1]), None);
    }

    #[test]
    fn group_digits() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }
}
