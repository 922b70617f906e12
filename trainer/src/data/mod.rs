//! Datasets: IDX readers and the image-classification datasets iocane trains on.
//!
//! Three sources, chosen with a [`DatasetSpec`] (parsed from the `--dataset` argument):
//!
//! - `mnist-small`: 8,000 train / 2,000 test real MNIST digits embedded in the crate
//!   (`data/mnist-small/`, see `data/README.md` for provenance and the split rule);
//!   works offline from any working directory.
//! - `fashion-mnist`: the 60,000 / 10,000 Fashion-MNIST files, read from
//!   [`FASHION_MNIST_DIR`] (where the Debian package `dataset-fashion-mnist` installs
//!   them) or from the folder given with `--data-dir` ([`DatasetSpec::with_data_dir`]).
//! - `idx:DIR`: any folder holding the four standard IDX file names.
//!
//! All three use the standard file names `train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`,
//! each with or without a `.gz` suffix (compression is detected from the content).

pub mod idx;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest, Sha256};

pub use idx::IdxImages;

/// Default folder of the Fashion-MNIST IDX files (Debian package `dataset-fashion-mnist`).
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The command that installs Fashion-MNIST, quoted in the missing-dataset error.
pub const FASHION_MNIST_INSTALL: &str = "apt-get install dataset-fashion-mnist";

/// Class names of Fashion-MNIST, in label order.
pub const FASHION_MNIST_LABELS: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// The standard IDX file names (without `.gz`): train images, train labels, test images,
/// test labels.
pub const IDX_FILE_NAMES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// The dataset names [`DatasetSpec::from_str`] accepts.
pub const DATASET_NAMES: &str = "mnist-small, fashion-mnist, idx:DIR";

/// The embedded `mnist-small` files, in [`IDX_FILE_NAMES`] order.
const MNIST_SMALL: [(&str, &[u8]); 4] = [
    (
        "mnist-small/train-images-idx3-ubyte.gz",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist-small/train-images-idx3-ubyte.gz")),
    ),
    (
        "mnist-small/train-labels-idx1-ubyte.gz",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist-small/train-labels-idx1-ubyte.gz")),
    ),
    (
        "mnist-small/t10k-images-idx3-ubyte.gz",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist-small/t10k-images-idx3-ubyte.gz")),
    ),
    (
        "mnist-small/t10k-labels-idx1-ubyte.gz",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist-small/t10k-labels-idx1-ubyte.gz")),
    ),
];

/// Errors from reading IDX files and loading datasets.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing a file failed.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The gzip stream is corrupt or truncated.
    #[error("{file}: gzip error")]
    Gzip {
        /// The file (or in-memory source) name.
        file: String,
        /// The decompressor's error.
        #[source]
        source: std::io::Error,
    },
    /// The file (after decompression) exceeds the size limit.
    #[error("{file}: larger than the limit of {limit} bytes (after decompression)")]
    TooLarge {
        /// The file name.
        file: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The first two bytes of the IDX magic are not zero: not an IDX file.
    #[error("{file}: bad IDX magic {found:#010x}, expected {expected}")]
    BadMagic {
        /// The file name.
        file: String,
        /// The first four bytes, big-endian.
        found: u32,
        /// What was expected.
        expected: String,
    },
    /// The IDX data type is not unsigned byte (0x08).
    #[error("{file}: IDX data type {found:#04x} ({found_name}) is not supported, expected 0x08 (unsigned byte)")]
    WrongDataType {
        /// The file name.
        file: String,
        /// The data-type byte found.
        found: u8,
        /// Its name.
        found_name: &'static str,
    },
    /// The IDX header declares the wrong number of dimensions.
    #[error("{file}: IDX magic {magic:#010x} declares {found} dimensions, expected {expected}")]
    DimensionCount {
        /// The file name.
        file: String,
        /// The magic found.
        magic: u32,
        /// The number of dimensions found.
        found: u8,
        /// What was expected.
        expected: String,
    },
    /// The file is shorter than its header says.
    #[error("{file}: truncated IDX file: expected {expected} bytes, found {actual}")]
    Truncated {
        /// The file name.
        file: String,
        /// The length implied by the header (or the header length, when even that is cut).
        expected: u128,
        /// The actual length (after decompression).
        actual: u64,
    },
    /// The file is longer than its header says.
    #[error("{file}: {} trailing bytes after the IDX data: expected {expected} bytes, found {actual}", actual.saturating_sub(*expected))]
    TrailingBytes {
        /// The file name.
        file: String,
        /// The length implied by the header.
        expected: u64,
        /// The actual length (after decompression).
        actual: u64,
    },
    /// The image and label files hold different numbers of samples.
    #[error("{images_file} holds {images} images but {labels_file} holds {labels} labels")]
    CountMismatch {
        /// The image file name.
        images_file: String,
        /// Number of images.
        images: usize,
        /// The label file name.
        labels_file: String,
        /// Number of labels.
        labels: usize,
    },
    /// A label is not below the number of classes.
    #[error("{file}: label {label} at index {index} is out of range (dataset has {classes} classes)")]
    LabelOutOfRange {
        /// The label file name.
        file: String,
        /// Sample index.
        index: usize,
        /// The label.
        label: u8,
        /// Number of classes.
        classes: usize,
    },
    /// Train and test images have different shapes.
    #[error("{dataset}: train images are {train:?} (h, w, c) but test images are {test:?}")]
    ShapeMismatch {
        /// The dataset.
        dataset: String,
        /// Train image shape (height, width, channels).
        train: (usize, usize, usize),
        /// Test image shape (height, width, channels).
        test: (usize, usize, usize),
    },
    /// A dataset folder or file is missing.
    #[error("{dataset}: {} not found{}", path.display(), hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default())]
    Missing {
        /// The dataset.
        dataset: String,
        /// The missing folder or file.
        path: PathBuf,
        /// How to get it, if known.
        hint: Option<String>,
    },
    /// The largest label of an `idx:DIR` dataset leaves classes below it without a single
    /// training sample (for example one stray label 200 in a 10-class file).
    #[error("{file}: labels run up to {max}, which would make {} classes, but classes {} have no sample (a stray label?); samples per class: {counts}", usize::from(*max) + 1, ranges(empty))]
    EmptyClasses {
        /// The label file name.
        file: String,
        /// The largest label.
        max: u8,
        /// The classes below `max` without a sample.
        empty: Vec<usize>,
        /// Samples per class that occurs, `label:count` separated by spaces.
        counts: String,
    },
    /// An IDX image file declares an empty image or one too large to index.
    #[error("{file}: images of {rows}x{cols}x{channels} are not supported (every dimension must be >= 1 and an image at most {} bytes)", idx::MAX_DECOMPRESSED_BYTES)]
    ImageShape {
        /// The file name.
        file: String,
        /// Declared rows.
        rows: usize,
        /// Declared columns.
        cols: usize,
        /// Declared channels.
        channels: usize,
    },
    /// `--dataset` named no known dataset.
    #[error("unknown dataset `{name}`: valid datasets are {DATASET_NAMES}")]
    UnknownDataset {
        /// The name given.
        name: String,
    },
}

/// `[1, 2, 3, 7, 9, 10]` -> `1..=3, 7, 9..=10`.
fn ranges(v: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if j == i { v[i].to_string() } else { format!("{}..={}", v[i], v[j]) });
        i = j + 1;
    }
    out.join(", ")
}

/// The number of classes of an `idx:DIR` dataset from its training labels: the largest label
/// plus one (at least 2, at most 256 since labels are bytes), provided every class below
/// it has at least one sample. Otherwise a [`DataError::EmptyClasses`] listing the empty
/// classes and the count of every class that occurs, so that one stray label cannot
/// silently turn a 10-class dataset into a 201-class one. `file` names the labels in errors.
pub fn classes_of_labels(labels: &[u8], file: &str) -> Result<usize, DataError> {
    let mut counts = [0usize; 256];
    for &l in labels {
        counts[usize::from(l)] += 1;
    }
    let max = labels.iter().copied().max().unwrap_or(0);
    let classes = usize::from(max) + 1;
    let empty: Vec<usize> = (0..classes).filter(|&c| counts[c] == 0).collect();
    // A file with only label 0 still makes a 2-class problem (class 1 is then empty).
    if !empty.is_empty() && !labels.is_empty() {
        let counts =
            (0..classes).filter(|&c| counts[c] > 0).map(|c| format!("{c}:{}", counts[c])).collect::<Vec<_>>().join(" ");
        return Err(DataError::EmptyClasses { file: file.to_string(), max, empty, counts });
    }
    Ok(classes.max(2))
}

/// An image-classification dataset held in memory: `len()` images of
/// `height x width x channels` bytes (NHWC) with one label each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Name, e.g. `"mnist-small/train"`.
    pub name: String,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Channels per pixel.
    pub channels: usize,
    /// Number of classes; every label is below it.
    pub classes: usize,
    /// Class names, `classes` entries.
    pub labels_text: Vec<String>,
    /// Raw 8-bit pixels, NHWC, `len() * image_len()` bytes.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes; every label is below it. For `mnist-small` and `fashion-mnist` it
    /// is the declared 10; for `idx:DIR` it comes from [`classes_of_labels`].
    pub fn num_classes(&self) -> usize {
        self.classes
    }

    /// Bytes per image: `height * width * channels`.
    pub fn image_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// The pixels of image `i` (HWC).
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        assert!(i < self.len(), "image index {i} out of range (len {})", self.len());
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The label of sample `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn label(&self, i: usize) -> usize {
        usize::from(self.labels[i])
    }

    /// The first `min(n, len())` samples. The name and class metadata are kept.
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            images: self.images[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            ..self.meta()
        }
    }

    /// The samples at `indices`, in that order (repeats allowed). The name and class
    /// metadata are kept.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset { images, labels, ..self.meta() }
    }

    /// Number of samples per class (`classes` entries).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(usize::from(l)) {
                *c += 1;
            }
        }
        counts
    }

    /// Lowercase hex SHA-256 identifying the data (not the name or class names).
    ///
    /// The hash covers, in order: the ASCII tag `iocane-dataset-v1`, then `len()`,
    /// `height`, `width`, `channels` and `classes` each as a little-endian `u64`, then
    /// all image bytes, then all label bytes.
    pub fn sha256_hex(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"iocane-dataset-v1");
        for v in [self.len(), self.height, self.width, self.channels, self.classes] {
            h.update((v as u64).to_le_bytes());
        }
        h.update(&self.images);
        h.update(&self.labels);
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A copy of everything but the samples.
    fn meta(&self) -> Dataset {
        Dataset {
            name: self.name.clone(),
            height: self.height,
            width: self.width,
            channels: self.channels,
            classes: self.classes,
            labels_text: self.labels_text.clone(),
            images: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Builds a dataset from decoded IDX images and labels, checking that the counts
    /// agree and every label is below `classes`. `images_file` / `labels_file` name the
    /// sources in error messages.
    pub fn from_idx(
        name: impl Into<String>,
        images: IdxImages,
        images_file: &str,
        labels: Vec<u8>,
        labels_file: &str,
        classes: usize,
        labels_text: Vec<String>,
    ) -> Result<Dataset, DataError> {
        if images.count != labels.len() {
            return Err(DataError::CountMismatch {
                images_file: images_file.to_string(),
                images: images.count,
                labels_file: labels_file.to_string(),
                labels: labels.len(),
            });
        }
        if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| usize::from(l) >= classes) {
            return Err(DataError::LabelOutOfRange { file: labels_file.to_string(), index, label, classes });
        }
        Ok(Dataset {
            name: name.into(),
            height: images.rows,
            width: images.cols,
            channels: images.channels,
            classes,
            labels_text,
            images: images.pixels,
            labels,
        })
    }
}

/// A train/test pair of datasets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    /// Training set.
    pub train: Dataset,
    /// Test set.
    pub test: Dataset,
}

/// Which dataset to load (the `--dataset` argument).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetSpec {
    /// `mnist-small`: the embedded 8,000 / 2,000 MNIST subset.
    MnistSmall,
    /// `fashion-mnist`: Fashion-MNIST from `dir`, or [`FASHION_MNIST_DIR`] if `None`.
    FashionMnist {
        /// Folder holding the four IDX files.
        dir: Option<PathBuf>,
    },
    /// `idx:DIR`: the four standard IDX files in a folder.
    Idx(PathBuf),
}

impl FromStr for DatasetSpec {
    type Err = DataError;

    /// Parses `mnist-small`, `fashion-mnist` or `idx:DIR`.
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "mnist-small" => Ok(DatasetSpec::MnistSmall),
            "fashion-mnist" => Ok(DatasetSpec::FashionMnist { dir: None }),
            _ => match s.strip_prefix("idx:") {
                Some(dir) if !dir.is_empty() => Ok(DatasetSpec::Idx(PathBuf::from(dir))),
                _ => Err(DataError::UnknownDataset { name: s.to_string() }),
            },
        }
    }
}

impl fmt::Display for DatasetSpec {
    /// `mnist-small`, `fashion-mnist` (the folder is not shown) or `idx:DIR`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetSpec::MnistSmall => f.write_str("mnist-small"),
            DatasetSpec::FashionMnist { .. } => f.write_str("fashion-mnist"),
            DatasetSpec::Idx(dir) => write!(f, "idx:{}", dir.display()),
        }
    }
}

impl DatasetSpec {
    /// Applies `--data-dir`: `Some(dir)` replaces Fashion-MNIST's folder; `None`, and
    /// every other dataset, are returned unchanged (`idx:DIR` names its own folder).
    pub fn with_data_dir(self, dir: Option<PathBuf>) -> Self {
        match (self, dir) {
            (DatasetSpec::FashionMnist { .. }, Some(dir)) => DatasetSpec::FashionMnist { dir: Some(dir) },
            (spec, _) => spec,
        }
    }
}

/// Loads the train and test sets of `spec`.
///
/// - `mnist-small`: 8,000 / 2,000 images 28x28x1, classes `"0"`..`"9"`.
/// - `fashion-mnist`: 60,000 / 10,000 images 28x28x1, the ten Fashion-MNIST class names.
///   A missing folder or file is a [`DataError::Missing`] saying how to install it.
/// - `idx:DIR`: classes = largest training label + 1 (at least 2), named `"0"`..`"N-1"`;
///   every class below it must have a training sample ([`classes_of_labels`]), and every test
///   label must be below it.
pub fn load(spec: &DatasetSpec) -> Result<Splits, DataError> {
    let tag = spec.to_string();
    match spec {
        DatasetSpec::MnistSmall => {
            let [(tif, ti), (tlf, tl), (vif, vi), (vlf, vl)] = MNIST_SMALL;
            let ((train_images, train_labels), (test_images, test_labels)) = rayon::join(
                || (idx::parse_images(ti, tif), idx::parse_labels(tl, tlf)),
                || (idx::parse_images(vi, vif), idx::parse_labels(vl, vlf)),
            );
            let parts = [
                (tif.to_string(), train_images?, tlf.to_string(), train_labels?),
                (vif.to_string(), test_images?, vlf.to_string(), test_labels?),
            ];
            assemble(&tag, parts, 10, digit_names(10))
        }
        DatasetSpec::FashionMnist { dir } => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR));
            let hint = format!("install it with `{FASHION_MNIST_INSTALL}` (as root) or pass `--data-dir DIR`");
            let parts = read_dir_parts(&tag, &dir, Some(&hint))?;
            let names = FASHION_MNIST_LABELS.iter().map(|s| s.to_string()).collect();
            assemble(&tag, parts, 10, names)
        }
        DatasetSpec::Idx(dir) => {
            let parts = read_dir_parts(&tag, dir, None)?;
            let classes = classes_of_labels(&parts[0].3, &parts[0].2)?;
            assemble(&tag, parts, classes, digit_names(classes))
        }
    }
}

/// `"0"`, `"1"`, ..., `"n-1"`.
fn digit_names(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// (images file, images, labels file, labels) for train and for test.
type Parts = [(String, IdxImages, String, Vec<u8>); 2];

/// Finds `name` or `name.gz` in `dir`.
fn find_file(dataset: &str, dir: &Path, name: &str, hint: Option<&str>) -> Result<PathBuf, DataError> {
    let missing =
        |path: PathBuf| DataError::Missing { dataset: dataset.to_string(), path, hint: hint.map(str::to_string) };
    if !dir.is_dir() {
        return Err(missing(dir.to_path_buf()));
    }
    let plain = dir.join(name);
    if plain.is_file() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(missing(dir.join(format!("{name}[.gz]"))))
}

/// Reads the four standard IDX files of `dir` (train and test in parallel).
fn read_dir_parts(dataset: &str, dir: &Path, hint: Option<&str>) -> Result<Parts, DataError> {
    let paths = IDX_FILE_NAMES.iter().map(|n| find_file(dataset, dir, n, hint)).collect::<Result<Vec<_>, _>>()?;
    let read = |images: &Path, labels: &Path| -> Result<(String, IdxImages, String, Vec<u8>), DataError> {
        let (i, l) = rayon::join(|| idx::read_images(images), || idx::read_labels(labels));
        Ok((images.display().to_string(), i?, labels.display().to_string(), l?))
    };
    let (train, test) = rayon::join(|| read(&paths[0], &paths[1]), || read(&paths[2], &paths[3]));
    Ok([train?, test?])
}

/// Validates and assembles the two splits of dataset `tag`.
fn assemble(tag: &str, parts: Parts, classes: usize, labels_text: Vec<String>) -> Result<Splits, DataError> {
    let [(tif, ti, tlf, tl), (vif, vi, vlf, vl)] = parts;
    let shape = |i: &IdxImages| (i.rows, i.cols, i.channels);
    if shape(&ti) != shape(&vi) {
        return Err(DataError::ShapeMismatch { dataset: tag.to_string(), train: shape(&ti), test: shape(&vi) });
    }
    let train = Dataset::from_idx(format!("{tag}/train"), ti, &tif, tl, &tlf, classes, labels_text.clone())?;
    let test = Dataset::from_idx(format!("{tag}/test"), vi, &vif, vl, &vlf, classes, labels_text)?;
    Ok(Splits { train, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        Dataset {
            name: "tiny".into(),
            height: 1,
            width: 2,
            channels: 1,
            classes: 3,
            labels_text: digit_names(3),
            images: vec![0, 1, 10, 11, 20, 21, 30, 31],
            labels: vec![0, 1, 2, 1],
        }
    }

    #[test]
    fn accessors() {
        let d = tiny();
        assert_eq!((d.len(), d.image_len(), d.is_empty()), (4, 2, false));
        assert_eq!(d.image(2), &[20, 21]);
        assert_eq!(d.label(2), 2);
        assert_eq!(d.class_counts(), vec![1, 2, 1]);
        let t = d.take(2);
        assert_eq!((t.len(), t.images.as_slice()), (2, &[0u8, 1, 10, 11][..]));
        assert_eq!(d.take(100), d);
        assert!(d.take(0).is_empty());
        let s = d.subset(&[3, 0, 3]);
        assert_eq!(s.labels, vec![1, 0, 1]);
        assert_eq!(s.images, vec![30, 31, 0, 1, 30, 31]);
        assert_eq!(s.name, "tiny");
    }

    #[test]
    #[should_panic]
    fn image_out_of_range_panics() {
        tiny().image(4);
    }

    #[test]
    fn sha256_is_documented_layout() {
        let d = tiny();
        let mut h = Sha256::new();
        h.update(b"iocane-dataset-v1");
        for v in [4u64, 1, 2, 1, 3] {
            h.update(v.to_le_bytes());
        }
        h.update([0, 1, 10, 11, 20, 21, 30, 31]);
        h.update([0, 1, 2, 1]);
        let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(d.sha256_hex(), want);
        assert_eq!(d.sha256_hex().len(), 64);
        // The name does not matter, the data does.
        let mut renamed = d.clone();
        renamed.name = "other".into();
        assert_eq!(renamed.sha256_hex(), d.sha256_hex());
        let mut changed = d.clone();
        changed.labels[0] = 2;
        assert_ne!(changed.sha256_hex(), d.sha256_hex());
        let mut reshaped = d.clone();
        reshaped.height = 2;
        reshaped.width = 1;
        assert_ne!(reshaped.sha256_hex(), d.sha256_hex());
    }

    #[test]
    fn spec_parse_and_display() {
        for s in ["mnist-small", "fashion-mnist", "idx:/tmp/x", "idx:rel/dir"] {
            let spec: DatasetSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        assert_eq!("idx:d".parse::<DatasetSpec>().unwrap(), DatasetSpec::Idx("d".into()));
        for bad in ["mnist", "", "idx:", "MNIST-SMALL", "fashion"] {
            let e = bad.parse::<DatasetSpec>().unwrap_err();
            assert!(matches!(e, DataError::UnknownDataset { .. }), "{e:?}");
            let msg = e.to_string();
            for valid in ["mnist-small", "fashion-mnist", "idx:DIR"] {
                assert!(msg.contains(valid), "{msg}");
            }
        }
    }

    #[test]
    fn data_dir_overrides_fashion_only() {
        let d = Some(PathBuf::from("/d"));
        assert_eq!(
            DatasetSpec::FashionMnist { dir: None }.with_data_dir(d.clone()),
            DatasetSpec::FashionMnist { dir: d.clone() }
        );
        assert_eq!(
            DatasetSpec::FashionMnist { dir: d.clone() }.with_data_dir(None),
            DatasetSpec::FashionMnist { dir: d.clone() }
        );
        assert_eq!(DatasetSpec::MnistSmall.with_data_dir(d.clone()), DatasetSpec::MnistSmall);
        assert_eq!(DatasetSpec::Idx("x".into()).with_data_dir(d), DatasetSpec::Idx("x".into()));
    }

    #[test]
    fn stray_label_200_is_not_a_201_class_dataset() {
        let mut labels: Vec<u8> = (0..50).map(|i| i % 10).collect();
        labels[17] = 200;
        let e = classes_of_labels(&labels, "train-labels").unwrap_err();
        match &e {
            DataError::EmptyClasses { max: 200, empty, .. } => assert_eq!(empty.len(), 190),
            other => panic!("{other:?}"),
        }
        let msg = e.to_string();
        assert!(msg.contains("10..=199") && msg.contains("200:1") && msg.contains("0:5"), "{msg}");
        // Without the stray label: 10 classes.
        labels[17] = 7;
        assert_eq!(classes_of_labels(&labels, "l").unwrap(), 10);
        // Bytes cap it at 256; a single class still makes a binary problem.
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(classes_of_labels(&all, "l").unwrap(), 256);
        assert_eq!(classes_of_labels(&[0, 0], "l").unwrap(), 2);
        assert_eq!(classes_of_labels(&[], "l").unwrap(), 2);
    }

    #[test]
    fn idx_dir_with_stray_label_is_rejected_and_test_labels_checked() {
        let d = tempfile::tempdir().unwrap();
        let write = |train: &[u8], test: &[u8]| {
            // (images file, labels file, labels, gzip) for the train and the test split.
            for (names, labels, gz) in [(&IDX_FILE_NAMES[0..2], train, false), (&IDX_FILE_NAMES[2..4], test, true)] {
                let images =
                    IdxImages { count: labels.len(), rows: 2, cols: 2, channels: 1, pixels: vec![0; 4 * labels.len()] };
                idx::write_images(d.path().join(names[0]), &images, gz).unwrap();
                idx::write_labels(d.path().join(names[1]), labels, gz).unwrap();
            }
        };
        let spec = DatasetSpec::Idx(d.path().to_path_buf());
        write(&[0, 1, 2, 1], &[2, 0]);
        let s = load(&spec).unwrap();
        assert_eq!((s.train.num_classes(), s.test.num_classes()), (3, 3));
        write(&[0, 1, 200, 1], &[1, 0]);
        assert!(matches!(load(&spec), Err(DataError::EmptyClasses { max: 200, .. })));
        write(&[0, 1, 2, 1], &[3, 0]);
        assert!(matches!(load(&spec), Err(DataError::LabelOutOfRange { label: 3, classes: 3, .. })));
    }

    #[test]
    fn embedded_mnist_small_loads() {
        let s = load(&DatasetSpec::MnistSmall).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (8000, 2000));
        assert_eq!((s.train.height, s.train.width, s.train.channels, s.train.classes), (28, 28, 1, 10));
        assert_eq!(s.train.name, "mnist-small/train");
        assert_eq!(s.test.name, "mnist-small/test");
    }
}
